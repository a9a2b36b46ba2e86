"""Parallel, atomic, resumable preprocessing of a source into cached shards.

The cache directory is named by a hash of the source fingerprint and the representation config, so
changing either builds a new cache and never reuses a stale one. Items are processed in shards; each
shard is written to a temporary file and renamed into place, so a killed run leaves only whole shards
and a re-run redoes just the missing ones. Files that cannot be used are skipped and counted.
"""

from __future__ import annotations

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
    blob = json.dumps(
        {"v": CACHE_VERSION, "source": source.fingerprint(), "representation": representation.to_config()},
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


def _worker(args: tuple[SourceItem, Representation, int]) -> tuple[Any, str]:
    return process_item(*args)


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


def _write_shard(path: Path, items: list[SourceItem], results: list[tuple[Any, str]]) -> None:
    kept = [(item, array) for item, (array, _) in zip(items, results) if array is not None]
    skipped = [(item.key, reason) for item, (array, reason) in zip(items, results) if array is None]
    arrays = [np.asarray(a) for _, a in kept]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    data = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int16)
    is_bool = data.dtype == bool
    _atomic_save(
        path,
        data=np.packbits(data, axis=-1) if is_bool else data,
        shape=np.array(data.shape, dtype=np.int64),
        packed=np.array(is_bool),
        lengths=lengths,
        keys=np.array([item.key for item, _ in kept], dtype=str),
        splits=np.array([item.split or "" for item, _ in kept], dtype=str),
        skipped=np.array(json.dumps(skipped)),
    )


def _read_shard(path: Path) -> tuple[list[np.ndarray], list[str], list[str | None], list[tuple[str, str]]]:
    with np.load(path, allow_pickle=False) as f:
        shape = tuple(int(s) for s in f["shape"])
        data = f["data"]
        if bool(f["packed"]):
            data = np.unpackbits(data, axis=-1, count=shape[-1]).astype(bool)
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
    directory = Path(cache_dir).expanduser() / f"{source.name}-{cache_key(source, representation)}"
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
    pool = mp.get_context("fork").Pool(n_jobs) if n_jobs > 1 and n_todo > 1 else None
    try:
        for i in todo:
            args = [(item, representation, min_steps) for item in shards[i]]
            results = []
            iterator = pool.imap(_worker, args, chunksize=8) if pool else map(_worker, args)
            for result in iterator:
                results.append(result)
                bar.update(1)
            _write_shard(directory / f"shard-{i:05d}.npz", shards[i], results)
    finally:
        bar.close()
        if pool:
            pool.terminate()
    corpus = load_cache(directory, require_manifest=False)
    manifest = {
        "source": source.fingerprint(),
        "representation": representation.to_config(),
        "pieces": len(corpus.arrays),
        "steps": int(sum(len(a) for a in corpus.arrays)),
        **corpus.skipped_summary(first=20),
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
