"""Generated music against real music, the same way for every model: on decoded `muspy.Music`.

A token model, a VAE and a piano-roll model of the same data are measured on equal terms: their
samples are decoded to music, real pieces of the held-out split are decoded and cut into windows of
the samples' length in bars, and metrics (`metrics.MusicMetrics`), their distribution overlap and
memorisation (`memorization.MemorizationIndex`, on one evaluation grid) are computed on that music.
`MusicReference` holds the real side, built once; `music_report` measures a batch of samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import muspy
import numpy as np
import torch

from datamodules.representations import Representation
from muselab.music.memorization import MemorizationIndex
from muselab.music.metrics import METRIC_NAMES, MusicMetrics, distribution_overlap
from muselab.music.rendering import pianoroll_image, render_audio

log = logging.getLogger(__name__)


def n_notes(music: muspy.Music) -> int:
    """Total notes over all tracks."""
    return sum(len(t.notes) for t in music.tracks)


def n_bars(music: muspy.Music, beats_per_bar: int = 4) -> int:
    """Bars (of ``beats_per_bar`` beats) the piece spans, counting bar lines and trailing silence."""
    resolution = music.resolution or muspy.DEFAULT_RESOLUTION
    return max(1, math.ceil(music.get_end_time() / (resolution * beats_per_bar)))


def music_window(music: muspy.Music, start: int, stop: int, beats_per_bar: int = 4) -> muspy.Music:
    """The stretch ``[start, stop)`` (ticks) of ``music``, moved to time 0.

    Notes that overlap the stretch are cut to it, as a window of a piano-roll would cut them; bar
    lines mark its full length so trailing silence counts.
    """
    resolution = music.resolution or muspy.DEFAULT_RESOLUTION
    tempo = music.tempos[0].qpm if music.tempos else 120.0
    bar = resolution * beats_per_bar
    out = muspy.Music(
        resolution=resolution,
        tempos=[muspy.Tempo(0, tempo)],
        time_signatures=[muspy.TimeSignature(0, beats_per_bar, 4)],
        barlines=[muspy.Barline(t) for t in [*range(0, stop - start, bar), stop - start]],
    )
    for track in music.tracks:
        notes = [
            muspy.Note(
                max(n.time, start) - start,
                n.pitch,
                min(n.time + n.duration, stop) - max(n.time, start),
                n.velocity,
            )
            for n in track.notes
            if n.time < stop and n.time + n.duration > start
        ]
        out.tracks.append(
            muspy.Track(program=track.program, is_drum=track.is_drum, name=track.name, notes=notes)
        )
    return out


def music_windows(
    musics: Sequence[muspy.Music], bars: int, max_windows: int = 32, beats_per_bar: int = 4
) -> list[muspy.Music]:
    """Up to ``max_windows`` windows of ``bars`` bars, spread evenly over ``musics``.

    Windows do not overlap unless that gives fewer than ``max_windows`` (small splits), when they hop
    by a quarter window. Pieces shorter than a window are used whole only when no piece is long
    enough.
    """
    lengths = [m.get_end_time() for m in musics]
    sizes = [bars * (m.resolution or muspy.DEFAULT_RESOLUTION) * beats_per_bar for m in musics]

    def spans_at(quarters: int) -> list[tuple[int, int]]:
        return [
            (i, s)
            for i, (end, size) in enumerate(zip(lengths, sizes))
            for s in range(0, end - size + 1, max(1, size * quarters // 4))
        ]

    spans = spans_at(4)
    if len(spans) < max_windows:
        spans = spans_at(1)
    if not spans:
        return [musics[i] for i, end in enumerate(lengths) if end][:max_windows]
    if len(spans) > max_windows:
        spans = [spans[int(k)] for k in np.linspace(0, len(spans) - 1, max_windows).round()]
    return [music_window(musics[i], s, s + sizes[i], beats_per_bar) for i, s in spans]


def decode_pieces(
    arrays: Sequence[np.ndarray], representation: Representation, max_pieces: int | None = None
) -> list[muspy.Music]:
    """Decode the encoded pieces of a split (up to ``max_pieces``, spread evenly) to music."""
    indices = range(len(arrays))
    if max_pieces is not None and len(arrays) > max_pieces:
        indices = np.linspace(0, len(arrays) - 1, max_pieces).round().astype(int).tolist()
    return [representation.decode(arrays[i]) for i in indices]


class MusicReference:
    """The real music generated music is measured against, built on first use and then kept.

    Args:
        real_arrays: encoded pieces of a held-out split (validation in training, test in ``make
            evaluate``), cut into windows of the samples' length.
        train_arrays: encoded training pieces, for the memorisation index (None: no index).
        representation: decodes both.
        bars: window length in bars (the samples' length).
        max_windows: real windows to measure.
        memorization_bars: window of the memorisation index (capped by ``bars``).
        max_train_pieces: training pieces indexed (None: all; spread evenly when capped).
        beats_per_bar: bar length.
    """

    def __init__(
        self,
        real_arrays: Sequence[np.ndarray] | None,
        train_arrays: Sequence[np.ndarray] | None,
        representation: Representation,
        bars: int,
        max_windows: int = 32,
        memorization_bars: int = 4,
        max_train_pieces: int | None = None,
        beats_per_bar: int = 4,
    ) -> None:
        self.real_arrays = real_arrays or []
        self.train_arrays = train_arrays
        self.representation = representation
        self.bars = int(bars)
        self.max_windows = int(max_windows)
        self.memorization_bars = max(1, min(int(memorization_bars), self.bars))
        self.max_train_pieces = max_train_pieces
        self.beats_per_bar = int(beats_per_bar)

    @cached_property
    def windows(self) -> list[muspy.Music]:
        """Real windows of ``bars`` bars."""
        pieces = decode_pieces(self.real_arrays, self.representation, max_pieces=4 * self.max_windows)
        return music_windows(pieces, self.bars, self.max_windows, self.beats_per_bar)

    @cached_property
    def values(self) -> dict[str, torch.Tensor]:
        """Per-window metric values of the real windows."""
        metric = MusicMetrics(METRIC_NAMES, self.beats_per_bar, sync_on_compute=False)
        metric.update(self.windows)
        return metric.values()

    @cached_property
    def memorization(self) -> MemorizationIndex | None:
        """The training set's memorisation index (None without training pieces)."""
        if not self.train_arrays:
            return None
        train = decode_pieces(self.train_arrays, self.representation, self.max_train_pieces)
        return MemorizationIndex(
            train, self.memorization_bars, self.beats_per_bar, progress=len(train) > 2000
        )

    def data_metrics(self) -> dict[str, float]:
        """``data/<metric>``: means over the real windows, with ``data/n_notes``."""
        out = {f"data/{k}": float(v.mean()) for k, v in self.values.items() if v.numel()}
        if self.windows:
            out["data/n_notes"] = float(np.mean([n_notes(m) for m in self.windows]))
        return out


def music_report(
    generated: Sequence[muspy.Music], reference: MusicReference | None = None, beats_per_bar: int = 4
) -> dict[str, float]:
    """Figures of generated music: ``sample/<metric>``, ``sample/n_notes``, and with a reference
    ``overfit/overlap_<metric>`` (overlapping area with the real windows' distribution) and
    ``overfit/memorization`` (share of generated windows copied from the training set)."""
    metric = MusicMetrics(METRIC_NAMES, beats_per_bar, sync_on_compute=False)
    metric.update(list(generated))
    out = {f"sample/{k}": float(v) for k, v in metric.compute().items()}
    out["sample/n_notes"] = float(np.mean([n_notes(m) for m in generated])) if generated else 0.0
    if reference is not None:
        if reference.windows:
            overlap = distribution_overlap(metric.values(), reference.values)
            out.update({f"overfit/overlap_{k}": float(v) for k, v in overlap.items()})
        if reference.memorization is not None:
            out["overfit/memorization"] = reference.memorization.score(list(generated))
    return out


def loss_gap(callback_metrics: dict[str, Any], split: str = "val") -> dict[str, float]:
    """``overfit/loss_gap`` (``<split>/loss`` - train loss) and ``overfit/loss_ratio`` (their ratio).

    The train loss is the epoch mean (``train/loss_epoch`` when the step value is logged too).
    Empty when either loss is missing or not finite.
    """
    held_out = callback_metrics.get(f"{split}/loss")
    train = callback_metrics.get("train/loss_epoch", callback_metrics.get("train/loss"))
    if held_out is None or train is None:
        return {}
    held_out, train = float(held_out), float(train)
    if not (np.isfinite(held_out) and np.isfinite(train)):
        return {}
    out = {"overfit/loss_gap": held_out - train}
    if train > 0:
        out["overfit/loss_ratio"] = held_out / train
    return out


def write_midi(musics: Sequence[muspy.Music], out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """Write each `muspy.Music` to ``out_dir/<prefix>_NN.mid`` (atomically) and return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, music in enumerate(musics):
        path = out_dir / f"{prefix}_{i:02d}.mid"
        tmp = path.with_name(f".{path.name}.tmp")
        muspy.write_midi(tmp, music)
        tmp.replace(path)
        paths.append(path)
    return paths


def write_pieces(
    musics: Sequence[muspy.Music],
    out_dir: str | Path,
    prefix: str = "sample",
    n_audio: int | None = None,
    images: bool = True,
    audio_backend: str = "auto",
    sample_rate: int = 22050,
    title: str | None = None,
) -> list[dict[str, Path | None]]:
    """Write ``<prefix>_NN.mid`` (+ ``.png``, + ``.wav`` for the first ``n_audio``; None: all) per piece.

    Returns one dict per piece with the ``midi``, ``png`` and ``wav`` paths (None where not written).
    """
    midis = write_midi(list(musics), out_dir, prefix=prefix)
    n_audio = len(musics) if n_audio is None else n_audio
    out = []
    for i, (music, midi) in enumerate(zip(musics, midis)):
        png = wav = None
        if images:
            caption = f"{title or prefix} {i}: {n_notes(music)} notes"
            png = pianoroll_image(music, midi.with_suffix(".png"), title=caption)
        if i < n_audio:
            wav = midi.with_suffix(".wav")
            render_audio(music, wav, sample_rate=sample_rate, backend=audio_backend)
        out.append({"midi": midi, "png": png, "wav": wav})
    return out
