"""Memorisation: how much of what a model generates is copied verbatim from its training set.

Every model is measured the same way, on decoded music: each piece is drawn on one evaluation grid
(`evaluation_roll`: `EVAL_STEPS_PER_BEAT` steps per beat, all pitched tracks merged, a step holding
which pitches sound and which start), so a token model, a VAE and a piano-roll model of the same
data are compared on equal terms, and a copy is a copy whatever track or instrument it lands on.

`MemorizationIndex` hashes every ``n_bars``-bar window of the training pieces, at every step offset,
once. A generated piece is cut into windows of the same length (every ``hop_steps`` steps) and the
score is the share of its windows whose hash is in the index. The comparison is exact: a copy
transposed by a semitone, or moved by a 16th inside a bar, is new material. Windows where nothing
sounds are left out on both sides: silence is not a copy of anything.

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
from tqdm.auto import tqdm

EVAL_STEPS_PER_BEAT = 12  # exact for 16ths and 8th-note triplets
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on a uint64 array (numpy array arithmetic wraps mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _salts(n: int, seed: int) -> np.ndarray:
    """``n`` well-mixed uint64 constants, one per position (chunk of a step, or step of a window)."""
    return _mix(np.array([(seed + (i + 1) * _GOLDEN) & _MASK64 for i in range(n)], dtype=np.uint64))


def evaluation_roll(music: muspy.Music, steps_per_beat: int = EVAL_STEPS_PER_BEAT) -> np.ndarray:
    """``music`` on the evaluation grid: a ``(steps, 256)`` bool array, columns 0-127 the pitches
    sounding at each step and 128-255 the pitches starting there (so a held note and a repeated one
    differ). Pitched tracks are merged; drums are left out. Onsets and ends round to the nearest step,
    a note keeps at least one step, and the roll ends with the last note.
    """
    scale = steps_per_beat / float(music.resolution or muspy.DEFAULT_RESOLUTION)
    rows = [
        (n.time, n.time + n.duration, n.pitch)
        for track in music.tracks
        if not track.is_drum
        for n in track.notes
    ]
    if not rows:
        return np.zeros((0, 256), dtype=bool)
    notes = np.array(rows, dtype=np.float64)
    onset = np.rint(notes[:, 0] * scale).astype(np.int64)
    end = np.maximum(np.rint(notes[:, 1] * scale).astype(np.int64), onset + 1)
    pitch = notes[:, 2].astype(np.int64)
    roll = np.zeros((int(end.max()), 256), dtype=bool)
    for o, e, p in zip(onset.tolist(), end.tolist(), pitch.tolist()):
        roll[o:e, p] = True
    roll[onset, 128 + pitch] = True
    return roll


class MemorizationIndex:
    """Index of every n-bar window of the training set, on the evaluation grid, built once.

    Args:
        train: the training pieces as music (decoded from the training split).
        n_bars: window length in bars.
        beats_per_bar: bar length in beats.
        hop_steps: hop between the windows of a *generated* piece, in evaluation steps (default 1:
            every offset). Training windows are always indexed at every offset.
        progress: show a progress bar while indexing.
    """

    def __init__(
        self,
        train: Sequence[muspy.Music],
        n_bars: int = 4,
        beats_per_bar: int = 4,
        hop_steps: int | None = None,
        progress: bool = False,
    ) -> None:
        self.n_bars = int(n_bars)
        self.beats_per_bar = int(beats_per_bar)
        self.window = self.n_bars * self.beats_per_bar * EVAL_STEPS_PER_BEAT
        self.hop = int(hop_steps) if hop_steps is not None else 1
        if self.window < 1 or self.hop < 1:
            raise ValueError(f"need a positive window and hop, got {self.window} and {self.hop} steps")
        self._window_salts = _salts(self.window, seed=1)
        pieces = tqdm(train, desc="memorisation index", unit="piece", disable=not progress, leave=False)
        hashes = [self.window_hashes(music, hop=1) for music in pieces]
        self._hashes = np.unique(np.concatenate([np.zeros(0, dtype=np.uint64), *hashes]))
        self.n_train_pieces = len(train)

    def __len__(self) -> int:
        """Number of distinct non-silent training windows."""
        return len(self._hashes)

    @staticmethod
    def _step_hashes(roll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One uint64 hash per step of an evaluation roll, and whether anything sounds there."""
        chunks = np.packbits(roll, axis=1).view("<u8")  # 256 bits: four 64-bit chunks per step
        salts = _salts(chunks.shape[1], seed=2)
        hashes = np.zeros(len(roll), dtype=np.uint64)
        for j in range(chunks.shape[1]):
            hashes = _mix(hashes ^ _mix(chunks[:, j] ^ salts[j]))
        return hashes, roll[:, :128].any(axis=1)

    def window_hashes(self, music: muspy.Music, hop: int | None = None) -> np.ndarray:
        """Hashes of the non-silent windows of one piece, starting every ``hop`` steps (default: the index's)."""
        roll = evaluation_roll(music)
        if len(roll) < self.window:
            return np.zeros(0, dtype=np.uint64)
        steps, sounding = self._step_hashes(roll)
        starts = np.arange(0, len(roll) - self.window + 1, hop or self.hop)
        windows = np.lib.stride_tricks.sliding_window_view(steps, self.window)[starts]
        hashes = _mix(_mix(windows ^ self._window_salts).sum(axis=1, dtype=np.uint64))
        sounded = np.concatenate([[0], np.cumsum(sounding)])
        keep = sounded[starts + self.window] > sounded[starts]
        return hashes[keep]

    def counts(self, musics: Sequence[muspy.Music]) -> tuple[int, int]:
        """(windows found in the training set, non-silent windows) over ``musics``."""
        matched = total = 0
        for music in musics:
            hashes = self.window_hashes(music)
            total += len(hashes)
            if len(hashes) and len(self._hashes):
                where = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
                matched += int(np.count_nonzero(self._hashes[where] == hashes))
        return matched, total

    def score(self, musics: Sequence[muspy.Music]) -> float:
        """Share of the non-silent windows of ``musics`` that occur verbatim in the training set (0.0 if none)."""
        matched, total = self.counts(musics)
        return matched / total if total else 0.0


class Memorization(torchmetrics.Metric):
    """Share of generated windows copied from the training set, summed over updates and ranks.

    ``update(musics)`` takes `muspy.Music` pieces.

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

    def update(self, musics: Sequence[muspy.Music]) -> None:
        matched, total = self.index.counts(musics)
        self.matched += matched
        self.total += total

    def compute(self) -> torch.Tensor:
        if self.total == 0:
            return torch.tensor(0.0)
        return self.matched.double().div(self.total).float()
