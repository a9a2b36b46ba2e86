"""`PolyNLLCallback` and `poly_nll`: the polyphonic benchmark's exact metric (Boulanger-Lewandowski
et al. 2012), logged during training so checkpoints and early stopping can follow it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback

from datamodules.sources import load_boulanger


@torch.no_grad()
def poly_nll(model: Any, sequences: Sequence[np.ndarray | torch.Tensor], max_frames: int = 8192) -> float:
    """The benchmark metric: NLL in nats per predicted frame over a whole split.

    Each sequence is scored whole (no windows): frame ``t + 1`` is predicted from frames ``<= t``,
    the NLL of a frame is summed over its units, the first frame is never scored, and the result
    is the total NLL over all sequences divided by the total number of predicted frames
    (``sum(len(s) - 1)``). ``model`` is any `PianoRollModule` (its ``frame_nll`` scores frame 0
    from silence, which is dropped here). Sequences are batched by length, up to ``max_frames``
    padded frames per batch; padding comes after a sequence, so causality keeps it out of the sum.
    """
    arrays = [torch.as_tensor(np.asarray(s), dtype=torch.float32).reshape(len(s), -1) for s in sequences]
    if any(a.shape[1] != model.units for a in arrays):
        raise ValueError(f"sequences must have {model.units} units per frame")
    dtype = next(model.parameters()).dtype  # float64 models score in float64
    was_training = model.training
    model.eval()
    total, frames = 0.0, 0
    try:
        order = sorted(range(len(arrays)), key=lambda i: len(arrays[i]))
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order) and (stop - start + 1) * len(arrays[order[stop]]) <= max_frames:
                stop += 1
            group = [arrays[i] for i in order[start:stop]]
            start = stop
            length = max(len(a) for a in group)
            x = torch.zeros(len(group), length, model.units, dtype=dtype)
            mask = torch.zeros(len(group), length, dtype=torch.float64)
            for row, a in enumerate(group):
                x[row, : len(a)] = a
                mask[row, 1 : len(a)] = 1.0  # frame 0 has nothing before it: never scored
            nll = model.frame_nll(x.to(model.device)).double().cpu()
            total += float((nll * mask).sum())
            frames += int(mask.sum())
    finally:
        model.train(was_training)
    if frames == 0:
        raise ValueError("no predicted frames: every sequence has fewer than 2 frames")
    return total / frames


class PolyNLLCallback(Callback):
    """Logs ``val/poly_nll`` (the benchmark's exact metric on the whole split) after each validation.

    The usual ``val/loss`` averages per batch and scores the first frame; checkpoint selection and
    early stopping in the ``poly_*`` experiments use this figure instead. The history (epoch,
    seconds since the start of training, value) is also written to ``<run dir>/poly_nll.json``,
    so a benchmark can report how the number moved with the time spent.

    Args:
        path: a Boulanger ``.mat`` file to read the split from (the raw sequences, exactly as
            published); None: the datamodule's own ``split_arrays``.
        split: ``"val"`` or ``"test"``.
    """

    def __init__(self, path: str | None = None, split: str = "val") -> None:
        self.path = path
        self.split = split
        self.history: list[dict[str, float]] = []
        self._sequences: list[np.ndarray] | None = None
        self._start = time.perf_counter()

    def sequences(self, trainer: L.Trainer) -> list[np.ndarray]:
        """The split's sequences, read once."""
        if self._sequences is None:
            if self.path:
                self._sequences = load_boulanger(self.path)[self.split]
            else:
                self._sequences = list(trainer.datamodule.split_arrays[self.split])
        return self._sequences

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = poly_nll(pl_module, self.sequences(trainer))
        pl_module.log(f"{self.split}/poly_nll", value, prog_bar=True, on_epoch=True)
        self.history.append(
            {"epoch": trainer.current_epoch + 1, "seconds": time.perf_counter() - self._start, "nll": value}
        )
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "poly_nll.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"split": self.split, "history": self.history}, indent=1))
            os.replace(tmp, path)
