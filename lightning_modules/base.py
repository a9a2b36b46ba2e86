"""`GenerativeModule`: what every MuseLab model shares, and `load_model` to rebuild any of them.

- A model is built from the representation the datamodule chose (configs never repeat a
  vocabulary or a pitch range by hand), and saves that representation's config in its checkpoint.
- ``training_step`` / ``validation_step`` / ``test_step`` log ``train/loss``, ``val/loss``,
  ``test/loss`` and any other figure ``loss(batch)`` returns, under the same prefixes.
- ``sample(n, length=None, temperature=1.0, prompt=None, **options) -> list[muspy.Music]`` is the
  one contract that callbacks, ``make sample`` and ``make evaluate`` use. A model implements
  ``generate`` in its representation's array space; ``sample`` checks the options against
  ``generate``'s signature, encodes a primer and decodes the result.
- Optimisers and schedulers are Hydra partials. A model may name several (``optimizer:
  {generator: ..., discriminator: ...}``) and use manual optimisation. It owns its gradient
  clipping (``gradient_clip_val``) and its checkpoint ``monitor``, so a GAN runs with the default
  trainer config.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import muspy
import numpy as np
import torch
import torchmetrics

from datamodules.notes import NoteTable
from datamodules.representations import ReportsDecoding, Representation, build_representation
from muselab.errors import UserError

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class PromptNotSupported(UserError):
    """A primer was given to a model that cannot continue one."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, is not MuseLab's, or does not fit what it is loaded into."""


class IncompatibleRepresentation(UserError):
    """A model built from a representation it cannot read (e.g. a piano-roll model over tokens)."""


class GenerativeModule(L.LightningModule):
    """Base class of every MuseLab model.

    Subclasses implement ``loss(batch) -> dict`` (with a ``"loss"`` entry: the mean loss used for
    optimisation and logging) and ``generate(n, length, temperature=1.0, prompt=None, ...)``, whose
    extra keyword arguments are the sampling options the model takes (``top_k``, ``chords``, ...).
    A model that can continue a primer sets ``accepts_prompt = True``; ``generate`` then receives
    it encoded, as a ``(n, prompt_length, ...)`` tensor.

    Args:
        representation: a `Representation` or its config dict (as saved in checkpoints).
        optimizer: a partial that takes ``params`` (default AdamW, lr 1e-3), or a mapping of names to
            such partials for a model with several optimisers (see `optimizer_parameters`).
        scheduler: an optional partial that takes ``optimizer`` (or a mapping by optimiser name).
        gradient_clip_val: clip the gradient norm to this (None: no clipping). Applied by the base in
            automatic optimisation; a manual-optimisation model calls `clip` itself.
        monitor: the metric checkpoints and plateau schedulers follow, and ``monitor_mode`` its
            direction (``min`` or ``max``).
    """

    accepts_prompt: ClassVar[bool] = False

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        optimizer: OptimizerFactory | Mapping[str, OptimizerFactory] | None = None,
        scheduler: SchedulerFactory | Mapping[str, SchedulerFactory] | None = None,
        gradient_clip_val: float | None = None,
        monitor: str = "val/loss",
        monitor_mode: str = "min",
    ) -> None:
        super().__init__()
        if monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode must be 'min' or 'max', not {monitor_mode!r}")
        self.representation = build_representation(representation)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.gradient_clip_val = gradient_clip_val
        self.monitor = monitor
        self.monitor_mode = monitor_mode
        # Figures about the last `sample` call's decoding (a `ReportsDecoding` representation's).
        self.last_sample_figures: dict[str, float] = {}
        # The run's model and data settings (`muselab.runs.run_settings`), set by `muselab.train` and
        # kept in checkpoints, so that a resume can refuse changed ones wherever the file is.
        self.run_settings: dict[str, Any] | None = None

    def save_model_hyperparameters(self, **extra: Any) -> None:
        """Save the subclass's init args, with the representation as a plain config dict."""
        frame = inspect.currentframe().f_back  # the subclass's __init__, whose arguments are saved
        self.save_hyperparameters(ignore=["representation", "optimizer", "scheduler"], frame=frame)
        self.hparams["representation"] = self.representation.to_config()
        self.hparams.update(extra)

    # ----------------------------------------------------------------------------- to implement
    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self, n: int, length: int, temperature: float = 1.0, prompt: torch.Tensor | None = None
    ) -> torch.Tensor | list[np.ndarray]:
        """``n`` arrays of ``length`` steps (or tokens) in the representation's layout."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- sampling
    @property
    def default_length(self) -> int:
        """Sample length when none is asked for: the representation's, unless a model fixes its own."""
        return self.representation.describe().default_length

    def sample_options(self) -> list[str]:
        """The options ``generate`` takes beyond ``n, length, temperature, prompt``."""
        parameters = inspect.signature(self.generate).parameters
        return [p for p in parameters if p not in ("n", "length", "temperature", "prompt")]

    @property
    def file_representation(self) -> Representation:
        """The representation a user's file is read with: the training one, or its ``for_files()``
        variant where it has one (a melody read from whichever track holds it)."""
        for_files = getattr(self.representation, "for_files", None)
        return for_files() if callable(for_files) else self.representation

    def encode_prompt(
        self, prompt: muspy.Music | NoteTable | np.ndarray | torch.Tensor, n: int
    ) -> torch.Tensor:
        """A primer as a ``(n, steps, ...)`` tensor in the representation's layout."""
        if isinstance(prompt, muspy.Music | NoteTable):
            prompt = self.file_representation.encode(prompt)
        array = torch.as_tensor(np.asarray(prompt) if not isinstance(prompt, torch.Tensor) else prompt)
        if array.dtype == torch.bool:
            array = array.float()
        return array.to(self.device).unsqueeze(0).expand(n, *array.shape)

    def sample(
        self,
        n: int,
        length: int | None = None,
        temperature: float = 1.0,
        prompt: muspy.Music | NoteTable | np.ndarray | torch.Tensor | None = None,
        **options: Any,
    ) -> list[muspy.Music]:
        """Generate ``n`` pieces of ``length`` steps (default: `default_length`) as `muspy.Music`.

        ``prompt`` (a primer: music, or an encoded array) starts every piece; without ``length`` the
        pieces then run `default_length` past it. ``options`` go to ``generate`` unchanged; one it
        does not take is an error that lists those it does. A `ReportsDecoding` representation's
        figures about the generated arrays (tokens it had to skip) are kept in
        ``last_sample_figures``.
        """
        known = self.sample_options()
        takes_any = any(
            p.kind is inspect.Parameter.VAR_KEYWORD
            for p in inspect.signature(self.generate).parameters.values()
        )
        unknown = [k for k in options if k not in known]
        if unknown and not takes_any:
            raise UserError(
                f"{type(self).__name__} does not take the sampling option(s) {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(known) or 'none'}"
            )
        encoded = None
        if prompt is not None:
            if not self.accepts_prompt:
                raise PromptNotSupported(f"{type(self).__name__} cannot continue a primer (PRIMER=)")
            encoded = self.encode_prompt(prompt, n)
            steps = encoded.shape[1]
            if length is None:
                length = steps + self.default_length
            elif length <= steps:
                raise ValueError(
                    f"the primer is {steps} steps long, not shorter than the sample length {length}: "
                    "ask for a longer sample or leave the length unset"
                )
        length = int(length or self.default_length)
        was_training = self.training
        self.eval()
        try:
            arrays = self.generate(n, length, temperature=temperature, prompt=encoded, **options)
        finally:
            self.train(was_training)
        arrays = [_numpy(a) for a in arrays]
        if isinstance(self.representation, ReportsDecoding):
            self.last_sample_figures = self.representation.decode_report(arrays)
        return [self.representation.decode(a) for a in arrays]

    # ----------------------------------------------------------------------------- training
    def _shared_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        out = self.loss(batch)
        self.log_figures(out, split, batch_size=len(batch["x"]))
        return out["loss"]

    def log_figures(self, figures: Mapping[str, torch.Tensor | float], split: str, batch_size: int) -> None:
        """Log ``<split>/<name>`` for each figure (``loss`` on the progress bar, per step in training).

        Validation and test figures are torchmetrics means weighted by batch size, synced across DDP
        ranks by their sums and counts: the epoch value is the mean over every example, however the
        examples were shared out (a mean of each rank's mean is not, when ranks see unequal counts).
        """
        for name, value in figures.items():
            key = f"{split}/{name}"
            if split == "train":
                self.log(
                    key,
                    value,
                    prog_bar=name == "loss",
                    on_step=name == "loss",
                    on_epoch=True,
                    batch_size=batch_size,
                )
                continue
            metric, attribute = self._epoch_mean(key)
            metric.update(
                torch.as_tensor(value, dtype=torch.float32, device=self.device).detach(), weight=batch_size
            )
            self.log(
                key, metric, prog_bar=name == "loss", on_step=False, on_epoch=True, metric_attribute=attribute
            )

    def _epoch_mean(self, key: str) -> tuple[torchmetrics.MeanMetric, str]:
        """The running mean of a validation or test figure, made on first use (a model may log any)."""
        if "_epoch_means" not in self._modules:
            self._epoch_means = torch.nn.ModuleDict()
        name = key.replace("/", "__").replace(".", "_")
        if name not in self._epoch_means:
            self._epoch_means[name] = torchmetrics.MeanMetric().to(self.device)
            self._metric_attributes = None  # Lightning caches where metrics live: look again
        return self._epoch_means[name], f"_epoch_means.{name}"

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    # ----------------------------------------------------------------------------- optimisation
    def optimizer_parameters(self, name: str) -> Iterable[torch.nn.Parameter]:
        """The parameters of the optimiser called ``name``: all of them, unless a model with several
        optimisers says which are whose."""
        if isinstance(self.optimizer_factory, Mapping):
            raise NotImplementedError(
                f"{type(self).__name__} names optimisers: override optimizer_parameters"
            )
        return self.parameters()

    def configure_optimizers(self) -> Any:
        factories = self.optimizer_factory
        if not isinstance(factories, Mapping):
            factories = {"model": factories or (lambda params: torch.optim.AdamW(params, lr=1e-3))}
        schedulers = self.scheduler_factory
        if not isinstance(schedulers, Mapping):
            schedulers = {name: schedulers for name in factories}
        configs = []
        for name, factory in factories.items():
            optimizer = factory(params=self.optimizer_parameters(name))
            config: dict[str, Any] = {"optimizer": optimizer}
            if schedulers.get(name) is not None:
                config["lr_scheduler"] = {
                    "scheduler": schedulers[name](optimizer=optimizer),
                    "monitor": self.monitor,
                }
            configs.append(config)
        return configs[0] if len(configs) == 1 else configs

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        self.clip(optimizer)

    def clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient norm of ``optimizer``'s parameters to ``gradient_clip_val`` (if set)."""
        if self.gradient_clip_val:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["muselab_model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        if self.run_settings is not None:
            checkpoint["muselab_run_settings"] = self.run_settings


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def read_checkpoint(ckpt_path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A MuseLab checkpoint's contents; a `CheckpointError` naming the file says what is wrong."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a readable checkpoint (the file is empty)")
    # Unpickling arbitrary bytes can allocate without bound (a stray length field), so only
    # the zip archive that torch.save has written since torch 1.6 is handed to torch.load.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not the zip archive that torch.save writes)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict) or "muselab_model_class" not in checkpoint:
        raise CheckpointError(f"{path}: not a MuseLab checkpoint (it records no MuseLab model class)")
    return checkpoint


def load_model(ckpt_path: str | Path, map_location: str = "cpu") -> GenerativeModule:
    """Rebuild any MuseLab model from a checkpoint, whatever its class (the file is read once)."""
    checkpoint = read_checkpoint(ckpt_path, map_location)
    class_path = checkpoint["muselab_model_class"]
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(
            f"{ckpt_path}: its model class {class_path} cannot be imported ({exc})"
        ) from None
    try:
        model = cls(**checkpoint.get("hyper_parameters", {}))
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{ckpt_path}: does not rebuild a {class_name} ({type(exc).__name__}: {exc})"
        ) from None
    return model.to(map_location).eval()
