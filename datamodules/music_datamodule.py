"""`MusicDataModule`: source -> cached representation -> split -> windows -> batches."""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.cache import CachedCorpus, build_cache, load_cache
from datamodules.pieces import CompactPieces, piece_steps, piece_window
from datamodules.representations import (
    ConditioningPrefix,
    Representation,
    Transposable,
    build_representation,
)
from datamodules.sources import DataConfigError, Source, expand_path, printable

log = logging.getLogger(__name__)


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a hash of the piece's identity (or of its group, see
    `split_group_keys`): adding pieces never moves old ones."""
    # surrogateescape: a key that still holds the bytes of a non-UTF-8 file name hashes as those bytes.
    bucket = int(hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:12], 16) / float(16**12)
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


class WindowIndex(Sequence[tuple[int, int]]):
    """``(piece, start step)`` of every window, computed when asked, not stored: a Lakh-sized split has
    tens of millions of windows, which as a list of tuples would take gigabytes. Per piece it holds
    its length and the running count of windows.

    Windows start every ``hop`` steps, plus one that ends at the piece's last step when the hops do
    not reach it (so the tail is covered); ``window=None``: one window per piece, at 0. ``offsets``
    (per piece) shift every start of a piece: its windows are cut after its conditioning prefix.
    """

    def __init__(
        self, lengths: np.ndarray, window: int | None, hop: int | None, offsets: np.ndarray | None = None
    ) -> None:
        self.window, self.hop = window, hop
        self.offsets = offsets if offsets is not None and offsets.any() else None
        if window is None:
            self.last = np.zeros(len(lengths), dtype=np.int64)
            counts = np.ones(len(lengths), dtype=np.int64)
        else:
            self.last = np.maximum(lengths - window, 0)
            counts = self.last // hop + 1 + (self.last % hop != 0)
        self.ends = np.cumsum(counts)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        piece = int(np.searchsorted(self.ends, i, side="right"))
        k = i - (int(self.ends[piece - 1]) if piece else 0)
        if self.window is None:
            return piece, 0
        start = min(k * self.hop, int(self.last[piece]))
        return piece, start + (int(self.offsets[piece]) if self.offsets is not None else 0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class WindowDataset(Dataset):
    """Fixed-length windows over encoded pieces, with optional random transposition.

    Each example is ``{"x": window, "mask": (window,) bool}``; a piece shorter than the window is
    zero-padded and ``mask`` marks the real steps. ``window=None`` yields whole pieces (padded by the
    collate function to the longest in the batch). Boolean arrays (piano-rolls) become float32,
    integer arrays (tokens) int64, float arrays stay float32.

    Transposition (up to ``transpose`` semitones either way, never pushing a note out of range) needs
    a `Transposable` representation. The shift of an example is drawn from a generator seeded by
    ``(seed, epoch, index)``: the same for any number of DataLoader workers and after a resume, and
    different for every example and epoch. It is drawn when the index comes as ``(index, epoch)``,
    as `EpochSampler` yields it; a plain index gives the window untransposed.

    With a `ConditioningPrefix` representation, every window of a piece starts with the piece's
    prefix (its instruments, its genre): the windows are cut from the rest of the piece, each
    ``window`` minus the prefix long.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        representation: Representation,
        window: int | None,
        stride: int | None = None,
        transpose: int = 0,
        seed: int = 0,
    ) -> None:
        self.arrays = arrays
        self.representation = representation
        self.window = window
        self.transpose = int(transpose)
        self.transposer = representation if isinstance(representation, Transposable) else None
        self.seed = int(seed)
        lengths = np.array([piece_steps(arrays, piece) for piece in range(len(arrays))], dtype=np.int64)
        # conditioning prefix length of each piece (0 without a ConditioningPrefix representation)
        self.prefixes = np.array(
            [self._prefix(piece, window) if window is not None else 0 for piece in range(len(arrays))],
            dtype=np.int64,
        )
        self.index = WindowIndex(lengths, window, stride or window, offsets=self.prefixes)

    def _prefix(self, piece: int, window: int) -> int:
        if not isinstance(self.representation, ConditioningPrefix):
            return 0
        prefix = self.representation.prefix_length(piece_window(self.arrays, piece, 0, window))
        if prefix >= window:
            raise DataConfigError(
                f"data.window={window}: no longer than the conditioning prefix ({prefix} tokens) of "
                f"piece {piece}; use a longer window"
            )
        return prefix

    def __len__(self) -> int:
        return len(self.index)

    def shift(self, window: np.ndarray, index: int, epoch: int) -> int:
        """The transposition of example ``index`` in ``epoch`` (0 when it cannot move)."""
        if not self.transpose or self.transposer is None:
            return 0
        room = self.transposer.transpose_room(window)
        if room is None:
            return 0
        low, high = max(-self.transpose, -room[0]), min(self.transpose, room[1])
        rng = np.random.default_rng((self.seed, epoch, index))
        return int(rng.integers(low, high + 1)) if high >= low else 0

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        piece, start = self.index[i]
        length = piece_steps(self.arrays, piece) if self.window is None else self.window
        # Only this window is expanded from a `CompactPieces`, never the whole piece.
        prefix = int(self.prefixes[piece])
        chunk = piece_window(self.arrays, piece, start, length - prefix)
        if prefix:  # a window cut mid-piece still starts with the piece's conditioning prefix
            chunk = np.concatenate([piece_window(self.arrays, piece, 0, prefix), chunk])
        if epoch is not None and (semitones := self.shift(chunk, i, epoch)):
            chunk = self.transposer.transpose(chunk, semitones)
        out = np.zeros((length, *chunk.shape[1:]), dtype=chunk.dtype)
        out[: len(chunk)] = chunk
        mask = np.zeros(length, dtype=bool)
        mask[: len(chunk)] = True
        if out.dtype == bool or np.issubdtype(out.dtype, np.floating):
            x = torch.from_numpy(out.astype(np.float32))
        else:
            x = torch.from_numpy(out.astype(np.int64))
        return {"x": x, "mask": torch.from_numpy(mask)}


class EpochSampler(DistributedSampler):
    """A shuffling sampler whose order depends only on ``(seed, epoch)`` and that yields
    ``(index, epoch)``, so `WindowDataset` draws the same augmentation whatever the workers.

    Lightning calls ``set_epoch`` before every epoch, so a resumed run sees the same order and the
    same transpositions as an uninterrupted one. Under DDP each rank takes its share (it is a
    `DistributedSampler`, so Lightning keeps it instead of wrapping it).
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((i, self.epoch) for i in super().__iter__())


def pad_collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples, zero-padding the time axis to the longest one."""
    longest = max(len(b["x"]) for b in batch)
    if all(len(b["x"]) == longest for b in batch):
        # Fixed-length windows (every model but whole-piece training): one stack, no row-by-row
        # copies into a zeroed batch (those cost 250 us a piano-roll window against 9 us).
        return {name: torch.stack([b[name] for b in batch]) for name in batch[0]}
    out: dict[str, torch.Tensor] = {}
    for name in batch[0]:
        tensors = [b[name] for b in batch]
        padded = tensors[0].new_zeros((len(tensors), longest, *tensors[0].shape[1:]))
        for row, t in enumerate(tensors):
            padded[row, : len(t)] = t
        out[name] = padded
    return out


SPLIT_GROUP_RULES = ("auto", "file", "none")


def split_group_label(key: str, rule: str | re.Pattern[str], source: Source | None = None) -> str:
    """The group of a piece by its key: pieces with one label are versions of one piece.

    - ``none``: the key itself (every piece alone).
    - ``file``: the file (all tunes of one ABC file together).
    - a compiled regular expression: its first group (or whole match) in the key; no match, the key.
    - ``auto``: what ``source.split_group(key)`` says (Lakh matched: the song's folder), else
      ``<song>/versions/<file>`` and ``<song>/<song>.mid`` (POP909) -> ``<song>``, else the file's
      stem in any sibling folder (``x/melody/jig_1.mid`` and ``x/chords/jig_1.mid`` -> ``x/*/jig_1``;
      also ``a/song.mid`` beside ``a/song.xml``). An ABC tune keeps its tune suffix.
    """
    if rule == "none":
        return key
    if isinstance(rule, re.Pattern):
        match = rule.search(key)
        return (match.group(1) if rule.groups else match.group(0)) if match else key
    path, mark, tune = key.partition("#")
    if rule == "file":
        return path
    if source is not None and (hint := source.split_group(key)) is not None:
        return hint
    *folders, name = path.split("/")
    stem = os.path.splitext(name)[0]
    if len(folders) >= 2 and folders[-1].lower() == "versions":
        return "/".join(folders[:-1])
    if folders and stem == folders[-1]:
        return "/".join(folders)
    return f"{'/'.join(folders[:-1])}/*/{stem}{mark}{tune}"


def split_group_keys(
    keys: Sequence[str], rule: str | re.Pattern[str], source: Source | None = None, others: Sequence[str] = ()
) -> tuple[list[str], dict[str, int]]:
    """What `hash_split` hashes for each key, and the groups of several pieces (label -> size).

    A piece that shares its label with another (in ``keys`` or ``others``: the skipped files, so a
    version that failed to load still holds its group together) hashes the label, so versions of
    one piece land in one split; a piece alone hashes its own key, as before grouping existed, so
    its split does not change.
    """
    labels = [split_group_label(k, rule, source) for k in keys]
    counts = Counter(labels) + Counter(split_group_label(k, rule, source) for k in others)
    hashed = [label if counts[label] > 1 else key for key, label in zip(keys, labels)]
    kept = Counter(labels)
    return hashed, {label: n for label, n in kept.items() if n > 1}


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise DataConfigError(f"{key}={'null' if value is None else value}: {rule}")


def check_data_settings(
    window: Any,
    stride: Any,
    batch_size: Any,
    num_workers: Any,
    val_fraction: Any,
    test_fraction: Any,
    transpose: Any,
    min_steps: Any,
    n_jobs: Any,
) -> None:
    """Raise `DataConfigError` naming the first numeric data setting that cannot work."""
    steps = "must be a positive number of steps or null"
    _require(
        window is None or (_whole(window) and window > 0), "data.window", window, f"{steps} (whole pieces)"
    )
    _require(
        stride is None or (_whole(stride) and stride > 0), "data.stride", stride, f"{steps} (half a window)"
    )
    _require(
        _whole(batch_size) and batch_size > 0, "data.batch_size", batch_size, "must be a positive number"
    )
    _require(_whole(num_workers) and num_workers >= 0, "data.num_workers", num_workers, "must be 0 or more")
    for key, fraction in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        number = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool)
        _require(number and 0 <= fraction < 1, key, fraction, "must be a fraction, at least 0 and below 1")
    if val_fraction + test_fraction >= 1:
        raise DataConfigError(
            f"data.val_fraction={val_fraction} + data.test_fraction={test_fraction}: must add up to less "
            "than 1 (no piece would be left to train on)"
        )
    _require(
        _whole(transpose) and transpose >= 0,
        "data.transpose",
        transpose,
        "must be a whole number of semitones >= 0 (0: off)",
    )
    _require(
        _whole(min_steps) and min_steps >= 0,
        "data.min_steps",
        min_steps,
        "must be a whole number of steps >= 0",
    )
    _require(
        n_jobs is None or (_whole(n_jobs) and n_jobs > 0),
        "data.n_jobs",
        n_jobs,
        "must be a positive number of processes or null (all cores)",
    )


def compile_split_group(rule: str) -> str | re.Pattern[str]:
    """``auto``/``file``/``none`` as they are, anything else as a regular expression."""
    if rule in SPLIT_GROUP_RULES:
        return rule
    try:
        if not rule:
            raise re.error("empty")
        return re.compile(rule)
    except (re.error, TypeError) as exc:
        raise DataConfigError(
            f"data.split_group={rule!r}: must be auto, file, none or a regular expression ({exc})"
        ) from None


class MusicDataModule(L.LightningDataModule):
    """Any `Source` through any `Representation`, cached, split, windowed and batched.

    Args:
        source: where the music comes from (see `datamodules.sources`).
        representation: how each piece is encoded (see `datamodules.representations`).
        cache_dir: where preprocessed shards live; the sub-folder name hashes source + representation.
            ``~`` and ``$VAR`` are expanded.
        window: steps per training example (``None``: whole pieces).
        stride: hop between training windows (default: half a window).
        batch_size, num_workers: DataLoader settings.
        val_fraction, test_fraction: hash-split fractions, used when the source has no official split.
        transpose: maximum random transposition in semitones for training windows (0 disables).
        min_steps: pieces shorter than this many steps are skipped and counted.
        n_jobs: preprocessing processes (default: all cores).
        seed: seed of the augmentation RNG.
        split_group: which pieces are versions of one piece and go to one split (hash split only):
            ``auto`` (default; see `split_group_label`), ``file``, ``none`` or a regular expression
            whose first group (or match) names the group.

    Numeric settings are checked here: a bad one raises `DataConfigError` naming its config key.
    """

    def __init__(
        self,
        source: Source,
        representation: Representation | dict[str, Any],
        cache_dir: str = ".cache/muselab",
        window: int | None = 64,
        stride: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        transpose: int = 0,
        min_steps: int = 8,
        n_jobs: int | None = None,
        seed: int = 0,
        name: str | None = None,
        split_group: str = "auto",
    ) -> None:
        super().__init__()
        check_data_settings(
            window, stride, batch_size, num_workers, val_fraction, test_fraction, transpose, min_steps, n_jobs
        )
        self.split_group = split_group
        self._split_rule = compile_split_group(split_group)
        self.source = source
        self.representation = build_representation(representation)
        self._typed_cache_dir = str(cache_dir)
        self.cache_dir = expand_path(cache_dir)
        self.window = window
        self.stride = stride if stride is not None else (max(1, window // 2) if window else None)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.transpose = transpose
        self.min_steps = min_steps
        self.n_jobs = n_jobs
        self.seed = seed
        self.name = name or source.name
        self.corpus: CachedCorpus | None = None
        self._cache_directory: Path | None = None
        self.split_arrays: dict[str, Sequence[np.ndarray]] = {}
        self.split_keys: dict[str, list[str]] = {}
        self.split_groups: dict[str, int] = {}
        self.datasets: dict[str, WindowDataset] = {}

    def check(self) -> None:
        """Cheap checks before anything is built or parsed: the source's (a missing, empty or
        unreadable root) and the cache folder's; raises `DataConfigError` naming the config key."""
        self.source.check()
        if os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
            shown = f"paths.cache_dir={printable(self._typed_cache_dir)}"
            raise DataConfigError(f"{shown}: not a directory (set paths.cache_dir=/a/folder/for/the/cache)")

    def prepare_data(self) -> None:
        """Build the cache once (local rank 0 only under DDP)."""
        self._cache_directory = build_cache(
            self.source, self.representation, self.cache_dir, self.n_jobs, min_steps=self.min_steps
        )

    def cache_directory(self) -> Path:
        """The cache of this source and representation; built here if `prepare_data` has not run in
        this process (each DDP rank finds rank 0's cache by its fingerprint, once)."""
        if self._cache_directory is None:
            self.prepare_data()
        return self._cache_directory

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        self.corpus = load_cache(self.cache_directory(), self.representation)
        if not self.corpus.arrays:
            raise RuntimeError(f"no usable pieces in {self.source.name}: {self.corpus.skipped_summary()}")
        if self.corpus.skipped:
            summary = self.corpus.skipped_summary()
            log.warning(
                "Skipped %d unusable files (%s); first: %s",
                summary["skipped"],
                summary["skipped_by_reason"],
                ", ".join(summary["skipped_first"]),
            )
        self._log_routing()
        pieces = self.corpus.arrays
        indices: dict[str, list[int]] = {s: [] for s in ("train", "val", "test")}
        # Official splits are kept as published; the others are hashed by group, so that versions of
        # one piece (a POP909 song's versions, one tune's melody and chord renderings) never end up
        # on both sides of the train/test line.
        free = [i for i, split in enumerate(self.corpus.splits) if not split]
        hashed, self.split_groups = split_group_keys(
            [self.corpus.keys[i] for i in free],
            self._split_rule,
            self.source,
            others=[key for key, _ in self.corpus.skipped],
        )
        groups = dict(zip(free, hashed))
        # min_steps is not part of the cache key: a cache built with a lower min_steps (by a 2-bar
        # model) is shared with a run that asks for longer pieces, which drops the short ones here.
        too_short = 0
        for i, split in enumerate(self.corpus.splits):
            if piece_steps(pieces, i) < self.min_steps:
                too_short += 1
                continue
            indices[split or hash_split(groups[i], self.val_fraction, self.test_fraction)].append(i)
        if too_short:
            log.info("Left out %d cached pieces shorter than data.min_steps=%d", too_short, self.min_steps)
        if too_short == len(pieces):
            raise DataConfigError(
                f"data.min_steps={self.min_steps}: no piece of {self.source.name} is that long "
                f"(the longest has {max(piece_steps(pieces, i) for i in range(len(pieces)))} steps)"
            )
        self._log_split_groups()
        if not indices["val"]:  # tiny corpora: borrow one training piece so val/loss exists
            indices["val"].append(indices["train"][-1])
        if not indices["test"]:
            indices["test"] = list(indices["val"])
        self.split_arrays = {
            s: pieces.subset(idx) if isinstance(pieces, CompactPieces) else [pieces[i] for i in idx]
            for s, idx in indices.items()
        }
        self.split_keys = {s: [self.corpus.keys[i] for i in idx] for s, idx in indices.items()}
        self.datasets = {
            "train": WindowDataset(
                self.split_arrays["train"],
                self.representation,
                self.window,
                self.stride,
                self.transpose,
                self.seed,
            ),
            "val": WindowDataset(self.split_arrays["val"], self.representation, self.window, self.window),
            "test": WindowDataset(self.split_arrays["test"], self.representation, self.window, self.window),
        }
        log.info(
            "Data %s: %s pieces, %s windows (train/val/test)",
            self.name,
            "/".join(str(len(self.split_arrays[s])) for s in ("train", "val", "test")),
            "/".join(str(len(self.datasets[s])) for s in ("train", "val", "test")),
        )

    def _log_split_groups(self) -> None:
        if not self.split_groups:
            return
        n_pieces = sum(self.split_groups.values())
        largest, size = max(self.split_groups.items(), key=lambda g: (g[1], g[0]))
        log.info(
            "Split groups (data.split_group=%s): %d groups of versions, %d pieces, each kept in one split",
            self.split_group,
            len(self.split_groups),
            n_pieces,
        )
        if size > max(10, len(self.corpus.keys) // 20):
            log.warning(
                "Split group %s holds %d pieces: if they are not versions of one piece, set "
                "data.split_group=none (or a regular expression)",
                largest,
                size,
            )

    def _log_routing(self) -> None:
        """Say how the files' tracks were routed, and warn when every note went to one track."""
        routing = self.corpus.routing if self.corpus is not None else {}
        per_track = routing.get("notes_per_track", {})
        if not per_track:
            return
        log.info("Track routing, notes per track: %s", ", ".join(f"{k} {v:,}" for k, v in per_track.items()))
        for route in routing.get("routes", [])[:12]:
            target = "dropped" if route["track"] is None else f"track{route['track']}"
            log.info(
                "  %s -> %s: %d notes in %d pieces", route["source"], target, route["notes"], route["pieces"]
            )
        info = self.representation.describe()
        used = [k for k, v in per_track.items() if k != "dropped" and v > 0]
        if info.n_tracks > 1 and len(used) == 1:
            log.warning(
                "every note went to %s of the %d tracks: check how the data's tracks are routed "
                "(layout.track_mode, README 'Your own folder')",
                used[0],
                info.n_tracks,
            )

    def data_summary(self) -> dict[str, Any]:
        """Counts for the run summary: pieces per split, split groups and the skipped-file report."""
        assert self.corpus is not None, "call setup() first"
        return {
            "data/pieces_train": len(self.split_arrays["train"]),
            "data/pieces_val": len(self.split_arrays["val"]),
            "data/pieces_test": len(self.split_arrays["test"]),
            "data/windows_train": len(self.datasets["train"]),
            "data/split_groups_merged": len(self.split_groups),
            **{f"data/{k}": v for k, v in self.corpus.skipped_summary().items()},
            **{
                f"data/routing_notes_{k}": v
                for k, v in self.corpus.routing.get("notes_per_track", {}).items()
            },
            "data/routing": json.dumps(self.corpus.routing.get("routes", [])[:12]),
        }

    def _loader(self, split: str, sampler: DistributedSampler | None = None) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=pad_collate,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU asynchronously
            drop_last=False,
            # Its own generator: making an iterator draws a worker seed, and from the global generator
            # that draw would shift the random numbers training sees (a resume could not match).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(
            self.datasets["train"], num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed
        )
        return self._loader("train", sampler)

    def _eval_sampler(self, split: str) -> DistributedSampler | None:
        """Under DDP, each rank evaluates its share of ``split`` once, with no example repeated (the
        default sampler pads the shares to equal length with repeats, which moves the metrics); the
        weighted means of `GenerativeModule.log_figures` then equal one process's. A split with fewer
        windows than ranks keeps the padded sampler: every rank must run at least one batch."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1 or len(self.datasets[split]) < trainer.world_size:
            return None
        return UnrepeatedDistributedSampler(
            self.datasets[split], num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self._eval_sampler("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self._eval_sampler("test"))
