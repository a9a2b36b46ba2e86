"""Parallel, atomic, resumable preprocessing of a source into cached shards.

The cache directory is named by a hash of the source fingerprint and the representation config, so
changing either builds a new cache and never reuses a stale one. Items are processed in shards; each
shard is written to a temporary file and renamed into place, so a killed run leaves only whole shards
and a re-run redoes just the missing ones. Files that cannot be used are skipped and counted.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing as mp
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from datamodules.representations import Representation
from datamodules.sources import Source, SourceItem, load_item

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_NOTES = 2_000_000  # beyond this a "MIDI file" is almost surely garbage
MAX_BEATS = 50_000  # about 8 hours at 100 bpm


@dataclass
class CachedCorpus:
    """Encoded pieces (``arrays[i]``, time axis first) with their keys and official splits."""

    arrays: list[np.ndarray]
    keys: list[str]
    splits: list[str | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    directory: Path | None = None

    def skipped_summary(self, first: int = 5) -> dict[str, Any]:
        """Count of skipped files per reason and the first few file keys."""
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        return {
            "skipped": len(self.skipped),
            "skipped_by_reason": dict(reasons),
            "skipped_first": [f"{key} ({reason})" for key, reason in self.skipped[:first]],
        }


def cache_key(source: Source, representation: Representation) -> str:
    """Hash of everything that determines the cached content."""
    return _hash_config(source.fingerprint(), representation.to_config())


def _hash_config(fingerprint: dict[str, Any], representation_config: dict[str, Any]) -> str:
    # Split out of `cache_key` so `build_cache` fingerprints a source once (a folder fingerprint
    # stats every file).
    blob = json.dumps(
        {"v": CACHE_VERSION, "source": fingerprint, "representation": representation_config},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def process_item(item: SourceItem, representation: Representation, min_steps: int) -> tuple[Any, str]:
    """Load and encode one item. Returns ``(array, "")`` or ``(None, reason)``; never raises."""
    try:
        table = load_item(item)
    except Exception as exc:  # a corrupt file must not stop a run over 100k files
        return None, f"unreadable: {type(exc).__name__}: {str(exc)[:120]}"
    if table.resolution <= 0:
        return None, f"absurd: resolution {table.resolution}"
    if table.n_notes == 0:
        return None, "no notes"
    if table.n_notes > MAX_NOTES or table.end_tick / table.resolution > MAX_BEATS:
        return None, f"absurd: {table.n_notes} notes over {table.end_tick / table.resolution:.0f} beats"
    try:
        array = representation.encode(table)
    except Exception as exc:
        return None, f"unencodable: {type(exc).__name__}: {str(exc)[:120]}"
    if not np.asarray(array).any():
        return None, "no notes in the representation's tracks and pitch range"
    if len(array) < min_steps:
        return None, f"too short: {len(array)} steps < {min_steps}"
    return array, ""


# An encoded piece as stored: (data, shape of one time step, packed). Bool rolls are bit-packed
# along the last axis in the worker, which also makes the result 8x smaller to send back.
Packed = tuple[np.ndarray, tuple[int, ...], bool]


def _pack(array: Any) -> Packed:
    """``np.packbits(array, axis=-1)`` for a bool array of two or more axes; others pass unchanged."""
    array = np.asarray(array)
    if array.dtype != bool or array.ndim < 2:
        # A 1-D bool array packs along time, which does not commute with concatenating pieces:
        # `_write_shard` packs it after concatenation.
        return array, array.shape[1:], False
    width = array.shape[-1]
    rows = array.reshape(int(np.prod(array.shape[:-1])), width)
    if width % 8:
        # packbits along a last axis that is not a whole number of bytes is about twice as slow as
        # packing a flat buffer; zero-padding each row to whole bytes gives the same bytes.
        padded = np.zeros((len(rows), -(-width // 8) * 8), dtype=bool)
        padded[:, :width] = rows
        rows = padded
    packed = np.packbits(rows.reshape(-1)).reshape(*array.shape[:-1], -(-width // 8))
    return packed, array.shape[1:], True


def _worker(args: tuple[SourceItem, Representation, int]) -> tuple[Packed | None, str]:
    array, reason = process_item(*args)
    return (None if array is None else _pack(array)), reason


def _atomic_save(path: Path, **arrays: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see either the old or the whole new content."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass
class _ShardMeta:
    """What the manifest needs from a shard, without its (large) data."""

    lengths: list[int]
    skipped: list[tuple[str, str]]


def _write_shard(path: Path, items: list[SourceItem], results: list[tuple[Packed | None, str]]) -> _ShardMeta:
    kept = [(item, packed) for item, (packed, _) in zip(items, results) if packed is not None]
    skipped = [(item.key, reason) for item, (packed, reason) in zip(items, results) if packed is None]
    lengths = [len(data) for _, (data, _, _) in kept]
    if kept:
        # Packing along the last axis commutes with concatenating along the first, so the file is
        # the same as packing the concatenated arrays.
        data = np.concatenate([data for _, (data, _, _) in kept])
        step_shape, is_bool = kept[0][1][1], kept[0][1][2]
        shape = (sum(lengths), *step_shape)
        if data.dtype == bool:  # not packed by `_pack` (1-D)
            data, is_bool = np.packbits(data, axis=-1), True
    else:
        data, shape, is_bool = np.zeros(0, dtype=np.int16), (0,), False
    _atomic_save(
        path,
        data=data,
        shape=np.array(shape, dtype=np.int64),
        packed=np.array(is_bool),
        lengths=np.array(lengths, dtype=np.int64),
        keys=np.array([item.key for item, _ in kept], dtype=str),
        splits=np.array([item.split or "" for item, _ in kept], dtype=str),
        skipped=np.array(json.dumps(skipped)),
    )
    return _ShardMeta(lengths, skipped)


def _read_shard_meta(path: Path) -> _ShardMeta:
    # np.load of an .npz reads members lazily: this never touches "data".
    with np.load(path, allow_pickle=False) as f:
        return _ShardMeta([int(n) for n in f["lengths"]], [tuple(s) for s in json.loads(str(f["skipped"]))])


def _read_shard(path: Path) -> tuple[list[np.ndarray], list[str], list[str | None], list[tuple[str, str]]]:
    with np.load(path, allow_pickle=False) as f:
        shape = tuple(int(s) for s in f["shape"])
        data = f["data"]
        if bool(f["packed"]):
            # unpackbits gives 0/1 bytes, so viewing them as bool is exact and saves a copy.
            data = np.unpackbits(data, axis=-1, count=shape[-1]).view(bool)
        data = data.reshape(shape)
        offsets = np.concatenate([[0], np.cumsum(f["lengths"])])
        arrays = [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        keys = [str(k) for k in f["keys"]]
        splits = [str(s) or None for s in f["splits"]]
        skipped = [tuple(s) for s in json.loads(str(f["skipped"]))]
    return arrays, keys, splits, skipped


def build_cache(
    source: Source,
    representation: Representation,
    cache_dir: str | Path,
    n_jobs: int | None = None,
    shard_size: int = 512,
    min_steps: int = 1,
    progress: bool = True,
) -> Path:
    """Preprocess ``source`` into ``cache_dir/<source>-<hash>/`` (reusing whole shards) and return it."""
    fingerprint = source.fingerprint()
    key = _hash_config(fingerprint, representation.to_config())
    directory = Path(cache_dir).expanduser() / f"{source.name}-{key}"
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        log.info("Reusing preprocessed cache %s", directory)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    source.prepare()
    items = source.items()
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    todo = [i for i in range(len(shards)) if not (directory / f"shard-{i:05d}.npz").is_file()]
    n_todo = sum(len(shards[i]) for i in todo)
    n_jobs = max(1, n_jobs or (os.cpu_count() or 1))
    if todo:
        log.info(
            "Preprocessing %d of %d pieces from %s with %d processes", n_todo, len(items), source.name, n_jobs
        )
    bar = tqdm(total=n_todo, desc=f"preprocess {source.name}", unit="piece", disable=not progress or not todo)
    # Parsers (music21, muspy's MusicXML reader) allocate many small objects, and every full garbage
    # collection walks all objects alive, which in a process that imported torch and Lightning are
    # hundreds of thousands: freezing them out of the collector made MusicXML loading 3x faster.
    # Freezing before the fork also keeps the workers from touching (and so copying) those pages.
    froze = bool(todo) and gc.get_freeze_count() == 0
    pool = None
    metas: dict[int, _ShardMeta] = {}
    try:
        if froze:
            gc.freeze()
        pool = mp.get_context("fork").Pool(n_jobs) if n_jobs > 1 and n_todo > 1 else None
        for i in todo:
            args = [(item, representation, min_steps) for item in shards[i]]
            results = []
            iterator = pool.imap(_worker, args, chunksize=8) if pool else map(_worker, args)
            for result in iterator:
                results.append(result)
                bar.update(1)
            metas[i] = _write_shard(directory / f"shard-{i:05d}.npz", shards[i], results)
    finally:
        bar.close()
        if pool:
            pool.terminate()
        if froze:
            gc.unfreeze()
    # The manifest is summed from shard metadata: shards written now are known, older ones (a resumed
    # run) are read without their data, so finishing never decodes the whole corpus again.
    for i in range(len(shards)):
        if i not in metas:
            metas[i] = _read_shard_meta(directory / f"shard-{i:05d}.npz")
    lengths = [n for i in sorted(metas) for n in metas[i].lengths]
    summary = CachedCorpus([], [], [], [s for i in sorted(metas) for s in metas[i].skipped])
    manifest = {
        "source": fingerprint,
        "representation": representation.to_config(),
        "pieces": len(lengths),
        "steps": int(sum(lengths)),
        **summary.skipped_summary(first=20),
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, default=str))
    return directory


def load_cache(directory: str | Path, require_manifest: bool = True) -> CachedCorpus:
    """Read every shard of a cache directory."""
    directory = Path(directory)
    if require_manifest and not (directory / "manifest.json").is_file():
        raise FileNotFoundError(f"{directory} is not a finished MuseLab cache (no manifest.json)")
    corpus = CachedCorpus([], [], [], [], directory)
    for path in sorted(directory.glob("shard-*.npz")):
        arrays, keys, splits, skipped = _read_shard(path)
        corpus.arrays += arrays
        corpus.keys += keys
        corpus.splits += splits
        corpus.skipped += skipped
    return corpus
