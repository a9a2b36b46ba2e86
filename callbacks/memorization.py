"""Memorisation: how much of what a model generates is copied verbatim from its training set.

`MemorizationIndex` hashes every ``n_bars``-bar window of the encoded training pieces, at every step
offset, once. A generated piece is cut into windows of the same length (every ``hop_steps`` steps)
and the score is the share of its windows whose hash is in the index. Windows are compared in the
representation's own array space: a binarised piano-roll, or the integer tokens. The comparison is
exact (a copy transposed by a semitone, or shifted by a step inside a bar, is a different window
only if its content differs; the index holds every offset, so a copied passage is found wherever
it starts in either piece). Entirely silent windows (all zeros: no note for a piano-roll, no event
for tokens) are left out on both sides: silence is not a copy of anything.

Windows are identified by 64-bit hashes (splitmix64-mixed, position-salted sums of per-step hashes),
computed with numpy for whole pieces at once; a false match needs a 64-bit collision.

`Memorization` wraps an index as a torchmetrics `Metric` whose matched/total counts are summed over
ranks, so the share is right under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import muspy
import numpy as np
import torch
import torchmetrics

from datamodules.representations import Representation

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15

ArrayLike = np.ndarray | torch.Tensor


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on a uint64 array (numpy array arithmetic wraps mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _salts(n: int, seed: int) -> np.ndarray:
    """``n`` well-mixed uint64 constants, one per position (chunk of a step, or step of a window)."""
    return _mix(np.array([(seed + (i + 1) * _GOLDEN) & _MASK64 for i in range(n)], dtype=np.uint64))


class MemorizationIndex:
    """Index of every n-bar window of the training set (hashes of the encoded windows), built once.

    Args:
        train_arrays: the encoded training pieces (``MusicDataModule.split_arrays["train"]``).
        representation: the representation that encoded them (gives steps per bar, encodes music).
        n_bars: window length in bars.
        beats_per_bar: bar length in beats.
        hop_steps: hop between the windows of a *generated* piece (default 1: every step offset).
            Training windows are always indexed at every offset.
    """

    def __init__(
        self,
        train_arrays: Sequence[np.ndarray],
        representation: Representation,
        n_bars: int = 4,
        beats_per_bar: int = 4,
        hop_steps: int | None = None,
    ) -> None:
        self.representation = representation
        self.n_bars = int(n_bars)
        self.beats_per_bar = int(beats_per_bar)
        self.window = self.n_bars * representation.steps_per_bar(self.beats_per_bar)
        self.hop = int(hop_steps) if hop_steps is not None else 1
        if self.window < 1 or self.hop < 1:
            raise ValueError(f"need a positive window and hop, got {self.window} and {self.hop} steps")
        self._window_salts = _salts(self.window, seed=1)
        hashes = [self.window_hashes(a, hop=1) for a in train_arrays]
        self._hashes = np.unique(np.concatenate([np.zeros(0, dtype=np.uint64), *hashes]))
        self.n_train_pieces = len(train_arrays)

    def __len__(self) -> int:
        """Number of distinct non-silent training windows."""
        return len(self._hashes)

    def _as_array(self, item: ArrayLike | muspy.Music) -> np.ndarray:
        if isinstance(item, muspy.Music):
            return self.representation.encode(item)
        if isinstance(item, torch.Tensor):
            return item.detach().cpu().numpy()
        return np.asarray(item)

    def _step_hashes(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One uint64 hash per time step, and whether the step holds anything (not all zeros)."""
        flat = array.reshape(len(array), -1)
        if self.representation.kind == "pianoroll":
            # Binarise the same way for bool training rolls and float 0/1 (or probability) samples.
            on = flat > 0.5
            data, sounding = np.packbits(on, axis=1), on.any(axis=1)
        else:
            ints = np.rint(flat).astype(np.int64) if np.issubdtype(flat.dtype, np.floating) else flat
            ints = ints.astype("<i8")
            data, sounding = ints.view(np.uint8).reshape(len(array), -1), (ints != 0).any(axis=1)
        width = -(-data.shape[1] // 8) * 8
        padded = np.zeros((len(array), width), dtype=np.uint8)
        padded[:, : data.shape[1]] = data
        chunks = padded.view("<u8")
        salts = _salts(chunks.shape[1], seed=2)
        hashes = np.zeros(len(array), dtype=np.uint64)
        for j in range(chunks.shape[1]):
            hashes = _mix(hashes ^ _mix(chunks[:, j] ^ salts[j]))
        return hashes, sounding

    def window_hashes(self, item: ArrayLike | muspy.Music, hop: int | None = None) -> np.ndarray:
        """Hashes of the non-silent windows of one piece, starting every ``hop`` steps (default: the index's)."""
        array = self._as_array(item)
        if len(array) < self.window:
            return np.zeros(0, dtype=np.uint64)
        steps, sounding = self._step_hashes(array)
        starts = np.arange(0, len(array) - self.window + 1, hop or self.hop)
        windows = np.lib.stride_tricks.sliding_window_view(steps, self.window)[starts]
        hashes = _mix(_mix(windows ^ self._window_salts).sum(axis=1, dtype=np.uint64))
        sounded = np.concatenate([[0], np.cumsum(sounding)])
        keep = sounded[starts + self.window] > sounded[starts]
        return hashes[keep]

    def counts(self, items: Sequence[ArrayLike | muspy.Music]) -> tuple[int, int]:
        """(windows found in the training set, non-silent windows) over ``items``."""
        matched = total = 0
        for item in items:
            hashes = self.window_hashes(item)
            if not len(hashes) or not len(self._hashes):
                total += len(hashes)
                continue
            where = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
            matched += int(np.count_nonzero(self._hashes[where] == hashes))
            total += len(hashes)
        return matched, total

    def score(self, arrays: Sequence[ArrayLike]) -> float:
        """Share of the non-silent windows of ``arrays`` that occur verbatim in the training set (0.0 if none)."""
        matched, total = self.counts(arrays)
        return matched / total if total else 0.0

    def score_music(self, musics: Sequence[muspy.Music]) -> float:
        """`score` of pieces given as music, encoded with the index's representation."""
        return self.score([self.representation.encode(m) for m in musics])


class Memorization(torchmetrics.Metric):
    """Share of generated windows copied from the training set, summed over updates and ranks.

    ``update(arrays)`` takes encoded arrays (numpy or torch) or `muspy.Music` pieces.

    Args:
        index: the `MemorizationIndex` of the training set.
        kwargs: passed to `torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, index: MemorizationIndex, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.add_state("matched", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, arrays: Sequence[ArrayLike | muspy.Music]) -> None:
        matched, total = self.index.counts(arrays)
        self.matched += matched
        self.total += total

    def compute(self) -> torch.Tensor:
        if self.total == 0:
            return torch.tensor(0.0)
        return self.matched.double().div(self.total).float()
