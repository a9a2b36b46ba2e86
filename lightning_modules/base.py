"""`GenerativeModule`: what every MuseLab model shares.

- It is built from the representation the datamodule chose (configs never repeat a vocabulary or a
  pitch range by hand), and saves that representation's config in its checkpoint.
- ``training_step`` / ``validation_step`` / ``test_step`` log ``train/loss``, ``val/loss``,
  ``test/loss`` (plus any extra figures a model returns, under the same prefixes).
- ``sample(n, steps, temperature, prompt) -> list[muspy.Music]`` is the one contract callbacks,
  the sample CLI and evaluators use. A model implements ``generate`` in its representation's array
  space; the base decodes.
- Optimiser and scheduler are Hydra partials (``_partial_: true``), so sweeps can change them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import muspy
import torch

from datamodules.representations import Representation, build_representation


class GenerativeModule(L.LightningModule):
    """Base class of every MuseLab model.

    Subclasses implement ``loss(batch) -> dict`` (with a ``"loss"`` entry: mean loss per predicted
    step, used for optimisation and logging) and ``generate(n, steps, temperature, prompt)``.

    Args:
        representation: a `Representation` or its config dict (as saved in checkpoints).
        optimizer: a partial that takes the parameters (default AdamW, lr 1e-3).
        scheduler: an optional partial that takes the optimiser.
    """

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.representation = build_representation(representation)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

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
        self, n: int, steps: int, temperature: float = 1.0, prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return ``n`` arrays of ``steps`` steps in the representation's layout."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- shared
    def sample(
        self, n: int, steps: int | None = None, temperature: float = 1.0, prompt: torch.Tensor | None = None
    ) -> list[muspy.Music]:
        """Generate ``n`` pieces of ``steps`` steps (default: 16 bars of 4/4) as `muspy.Music`."""
        steps = steps or 16 * self.representation.steps_per_bar()
        was_training = self.training
        self.eval()
        try:
            arrays = self.generate(n, steps, temperature, prompt)
        finally:
            self.train(was_training)
        return [self.representation.decode(a.detach().cpu().numpy()) for a in arrays]

    def _shared_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        out = self.loss(batch)
        batch_size = len(batch["x"])
        sync = split != "train"
        for name, value in out.items():
            self.log(
                f"{split}/{name}",
                value,
                prog_bar=name == "loss",
                on_step=split == "train" and name == "loss",
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=sync,
            )
        return out["loss"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["muselab_model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"


def load_model(ckpt_path: str | Path, map_location: str = "cpu") -> GenerativeModule:
    """Rebuild any MuseLab model from a checkpoint, whatever its class."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    class_path = checkpoint.get("muselab_model_class")
    if not class_path:
        raise ValueError(f"{ckpt_path} is not a MuseLab checkpoint (no muselab_model_class)")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.load_from_checkpoint(ckpt_path, map_location=map_location)


class PianoRollModule(GenerativeModule):
    """Base of autoregressive frame models over multi-track piano-rolls.

    A subclass provides a causal ``context(x_in) -> h`` over the flattened frames (``x_in[t]`` is frame
    ``t-1``; frame -1 is silence), plus ``init_state(n)`` / ``step(frame, state) -> (h, state)`` for
    generation. The head (``layers.heads``) scores and samples each frame given ``h``.

    ``loss`` is the Bernoulli (or head) negative log-likelihood in nats per frame, summed over
    tracks x pitches: the unit of the polyphonic-music literature.
    """

    def __init__(self, representation: Representation | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(representation, **kwargs)
        info = self.representation.describe()
        if info["kind"] != "pianoroll":
            raise ValueError(f"{type(self).__name__} needs a piano-roll representation, got {info['kind']!r}")
        self.n_tracks, self.n_pitches = info["shape_per_step"]
        self.units = self.n_tracks * self.n_pitches

    def context(self, x_in: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, n: int) -> Any:
        raise NotImplementedError

    def step(self, frame: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def frame_nll(self, x: torch.Tensor) -> torch.Tensor:
        """NLL in nats of every frame, (B, T), each predicted from the frames before it."""
        frames = x.reshape(x.shape[0], x.shape[1], -1)
        x_in = torch.cat([frames.new_zeros(frames.shape[0], 1, frames.shape[2]), frames[:, :-1]], dim=1)
        return self.head.nll(self.context(x_in), frames)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nll = self.frame_nll(batch["x"])
        mask = batch["mask"].to(nll.dtype)
        loss = (nll * mask).sum() / mask.sum().clamp_min(1.0)
        return {"loss": loss}

    @torch.no_grad()
    def generate(
        self, n: int, steps: int, temperature: float = 1.0, prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        state = self.init_state(n)
        frame = torch.zeros(n, self.units, device=self.device)
        out = []
        if prompt is not None:
            prompt = prompt.to(self.device, torch.float32).reshape(n, -1, self.units)
            for t in range(prompt.shape[1]):
                _, state = self.step(frame, state)
                frame = prompt[:, t]
                out.append(frame)
        for _ in range(steps - len(out)):
            h, state = self.step(frame, state)
            frame = self.head.sample(h, temperature)
            out.append(frame)
        return torch.stack(out, dim=1).reshape(n, steps, self.n_tracks, self.n_pitches)
