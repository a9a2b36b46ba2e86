"""Callbacks that protect a run: a `last.ckpt` at every validation, a stop with a clear message
when the loss stops being finite, and the random state restored on resume.

- `LastAndBestCheckpoint`: Lightning 2.6 writes ``last.ckpt`` only at a validation where it also
  saved a top-k checkpoint, so after a non-improving epoch "last" is not the last epoch and a resume
  from it silently loses epochs. This one writes it at every validation.
- `FiniteLossGuard`: a NaN or infinite training loss stops the run with a `TrainingDiverged` error
  that says so and at which step, before a checkpoint of the broken weights can replace a good one;
  a good ``last.ckpt`` is written early in the first epoch, so even a run that diverges in its first
  epoch leaves one.
- `RandomStateCheckpoint`: the torch, numpy and Python random states go into every checkpoint and are
  restored when training resumes (after Lightning's sanity check, right before the first training
  batch), so dropout and data order continue as an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from muselab.errors import UserError

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


class LastAndBestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose ``last.ckpt`` is written at every validation (see the module docstring)."""

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        # Skipped when a checkpoint (top-k or last) was already written at this step.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)


class FiniteLossGuard(Callback):
    """Stop training, with a message naming the step, as soon as the training loss is not finite.

    Args:
        metric: the logged step loss to watch (``train/loss`` logged with ``on_step`` shows up in
            ``callback_metrics`` as ``train/loss_step``).
        early_checkpoint: write ``last.ckpt`` (in ``dirpath``) after the first finite step when no
            checkpoint exists yet, so a run that diverges before its first validation leaves one.
        dirpath: where the checkpoints are (default: ``<default_root_dir>/checkpoints``).
    """

    def __init__(
        self, metric: str = "train/loss_step", early_checkpoint: bool = True, dirpath: str | None = None
    ) -> None:
        self.metric = metric
        self.early_checkpoint = early_checkpoint
        self.dirpath = dirpath
        self.good_checkpoint: str | None = None

    def _last_path(self, trainer: L.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.last_model_path:
            return Path(callback.last_model_path)
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if value is None and isinstance(outputs, dict) and "loss" in outputs:
            value = outputs["loss"]
        if value is None:
            return
        value = float(value)
        finite = math.isfinite(value)
        if trainer.world_size > 1:  # every rank stops together, or the others would wait forever
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            last = self._last_path(trainer)
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
            raise TrainingDiverged(
                f"train/loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}): the run "
                f"diverged and was stopped; {kept}. Lower model.optimizer.lr or set model.gradient_clip_val."
            )
        if self.early_checkpoint and self.good_checkpoint is None:
            last = self._last_path(trainer)
            # One decision for every rank: saving a checkpoint is collective.
            if not trainer.strategy.broadcast(last.is_file()):
                trainer.save_checkpoint(last)
            self.good_checkpoint = str(last)


class RandomStateCheckpoint(Callback):
    """Save the random states with every checkpoint and restore them when training resumes."""

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain Python values only: Lightning loads checkpoints with weights_only=True.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Applied here, not at load time: the sanity-check validation between the two draws random
        # numbers (each DataLoader iterator takes a seed) that the uninterrupted run did not draw.
        state, self._restore = self._restore, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        log.info("Restored the random state saved with the checkpoint")
