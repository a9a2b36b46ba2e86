"""Parallel, atomic, resumable preprocessing of a source into cached shards.

The cache directory is named by a hash of the source fingerprint and the representation config, so
changing either builds a new cache and never reuses a stale one. Items are processed in shards, each
built and written by one process; a shard is written to a temporary file and renamed into place, so
a killed run leaves only whole shards and a re-run redoes just the missing ones. Shards hold each
piece in its representation's compact form (`CompactStorage.encode_compact`: for a piano-roll, its
quantised notes), expanded when a run loads the cache. Files that cannot be used are skipped and
counted.

Memory stays bounded whatever the corpus size: the source's items stream in (`Source.iter_items`) and
are cut into shards as they come, each shard is handed to a process as soon as it is cut, the
manifest is summed shard by shard, and `load_cache` memory-maps the shards' notes
(`datamodules.pieces.map_npz_member`) instead of reading them, so a split larger than memory stays on
disk. What grows with the corpus is a few integers per piece and the piece keys (for the split).
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from datamodules.pieces import CompactPieces, map_npz_member
from datamodules.representations import Representation, build_representation, compact_codec
from datamodules.sources import (
    DataConfigError,
    Source,
    SourceItem,
    UnusableItem,
    expand_path,
    load_item,
    printable,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: shards hold compact forms (piano-roll notes, not bit-packed rolls)
MAX_NOTES = 2_000_000  # beyond this a "MIDI file" is almost surely garbage
MAX_BEATS = 50_000  # about 8 hours at 100 bpm


@dataclass
class CachedCorpus:
    """Encoded pieces (``arrays[i]``, time axis first) with their keys and official splits.

    ``arrays`` is a `CompactPieces` when loaded from a cache: the pieces stay in their compact form
    and ``arrays[i]`` expands one.
    """

    arrays: Sequence[np.ndarray]
    keys: list[str]
    splits: list[str | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    directory: Path | None = None
    routing: dict[str, Any] = field(default_factory=dict)

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


def process_item(
    item: SourceItem, representation: Representation, min_steps: int, routing: Routing | None = None
) -> tuple[Any, str]:
    """Load one item and encode it to the representation's compact form.

    Returns ``(compact, "")`` or ``(None, reason)``; never raises on bad input. With ``routing``, a
    kept piece adds how its source tracks were routed (for a representation that reports it).
    """
    try:
        table = load_item(item)
    except UnusableItem as exc:  # the loader knows what is wrong (an ABC file with no tune)
        return None, _one_line(str(exc), 200)
    except Exception as exc:  # a corrupt file must not stop a run over 100k files
        return None, f"unreadable: {type(exc).__name__}: {_one_line(str(exc), 120)}"
    if table.resolution <= 0:
        return None, f"absurd: resolution {table.resolution}"
    if table.n_notes == 0:
        return None, "no notes"
    if table.n_notes > MAX_NOTES or table.end_tick / table.resolution > MAX_BEATS:
        return None, f"absurd: {table.n_notes} notes over {table.end_tick / table.resolution:.0f} beats"
    codec = compact_codec(representation)
    try:
        compact = codec.encode_compact(table)
    except Exception as exc:
        return None, f"unencodable: {type(exc).__name__}: {_one_line(str(exc), 120)}"
    if codec.compact_is_silent(compact):
        return None, "no notes in the representation's tracks and pitch range"
    if (steps := codec.compact_steps(compact)) < min_steps:
        return None, f"too short: {steps} steps < {min_steps}"
    if routing is not None and hasattr(representation, "routing_report"):
        routing.add(representation.routing_report(table))
    return compact, ""


class Routing:
    """How source tracks were routed to a representation's tracks, summed over pieces.

    Keyed by ``(source track, output track)`` as `PianoRollRepresentation.routing_report` describes
    them (``"Piano (program 0)"``, ``2``; ``None``: dropped), each with its pieces and notes.
    """

    def __init__(self, rows: dict[str, list[int]] | None = None) -> None:
        self.rows: dict[str, list[int]] = dict(rows or {})

    def add(self, report: list[tuple[str, int | None, int]]) -> None:
        for source, track, notes in report:
            row = self.rows.setdefault(json.dumps([source, track]), [0, 0])
            row[0] += 1
            row[1] += int(notes)

    def merge(self, other: Routing) -> None:
        for key, (pieces, notes) in other.rows.items():
            row = self.rows.setdefault(key, [0, 0])
            row[0] += pieces
            row[1] += notes

    def summary(self, first: int = 30) -> dict[str, Any]:
        """Notes per output track, and the biggest ``first`` source -> track rows."""
        rows = sorted(
            ((*json.loads(k), pieces, notes) for k, (pieces, notes) in self.rows.items()), key=lambda r: -r[3]
        )
        per_track: dict[str, int] = {}
        for _, track, _, notes in rows:
            name = "dropped" if track is None else f"track{track}"
            per_track[name] = per_track.get(name, 0) + notes
        return {
            "notes_per_track": dict(sorted(per_track.items())),
            "routes": [{"source": s, "track": t, "pieces": p, "notes": n} for s, t, p, n in rows[:first]],
        }


def _one_line(text: str, limit: int) -> str:
    # A reason goes into logs, JSON and W&B: one line, printable (a path in a message may hold bytes
    # that are not UTF-8), short.
    return printable(" ".join(text.split()))[:limit]


def _save_npz(fh: Any, arrays: dict[str, Any]) -> None:
    """What `np.savez` writes, with a fixed timestamp on every member: the same shard content gives
    the same bytes in every run (np.savez stamps the current time), so caches can be compared."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(value))


def _atomic_save(path: Path, **arrays: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            _save_npz(fh, arrays)
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
    """What the manifest needs from a shard, without its data."""

    steps: list[int]
    skipped: list[tuple[str, str]]
    routing: Routing


def _write_shard(
    path: Path,
    items: list[SourceItem],
    results: list[tuple[np.ndarray | None, str]],
    steps: list[int],
    routing: Routing | None = None,
) -> _ShardMeta:
    """Write the compact forms of the kept ``items`` (concatenated along their first axis) atomically."""
    kept = [(item, compact) for item, (compact, _) in zip(items, results) if compact is not None]
    skipped = [(item.key, reason) for item, (compact, reason) in zip(items, results) if compact is None]
    data = np.concatenate([compact for _, compact in kept]) if kept else np.zeros(0, dtype=np.int32)
    _atomic_save(
        path,
        data=data,
        rows=np.array([len(compact) for _, compact in kept], dtype=np.int64),
        steps=np.array(steps, dtype=np.int64),
        keys=np.array([item.key for item, _ in kept], dtype=str),
        splits=np.array([item.split or "" for item, _ in kept], dtype=str),
        skipped=np.array(json.dumps(skipped)),
        routing=np.array(json.dumps((routing or Routing()).rows)),
    )
    return _ShardMeta(steps, skipped, routing or Routing())


def _build_shard(
    path: Path, items: list[SourceItem], representation: Representation, min_steps: int
) -> _ShardMeta:
    routing = Routing()
    results = [process_item(item, representation, min_steps, routing) for item in items]
    codec = compact_codec(representation)
    steps = [codec.compact_steps(compact) for compact, _ in results if compact is not None]
    return _write_shard(path, items, results, steps, routing)


# (shard index, shard path, its items): the representation and min_steps reach helpers by the fork.
ShardTask = tuple[int, Path, list[SourceItem]]


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_S = 1.0  # how often a helper blocked on its parent checks that the parent still lives


def _die_with_parent(parent: int) -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies; returns whether it could.

    A helper whose parent was killed (``kill -9``, the OOM killer, a closed terminal) would otherwise
    go on building shards for nobody, then hang at exit on a pipe that no one reads. (Linux sends it
    when the parent *thread* that forked ends; that thread waits for the helpers in `_run_shards`.)
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # prctl's arguments are unsigned longs: pass them so, not as ctypes' default int.
        args = [ctypes.c_ulong(int(signal.SIGTERM)), *[ctypes.c_ulong(0)] * 3]
        if libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), *args) != 0:
            return False
    except (OSError, AttributeError):
        return False
    # The parent may have died between the fork and the prctl: then no signal will come.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _watch_parent(parent: int) -> None:
    """Where the kernel cannot signal a parent's death: poll, and stop this process like a SIGTERM."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)


def _next_task(tasks: Any, parent: int) -> ShardTask | None:
    """The next task from the parent's queue (None: no more), giving up (exit) once the parent is gone."""
    while True:
        try:
            return tasks.get(timeout=PARENT_POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                raise SystemExit(1) from None


def _put(results: Any, message: Any, parent: int) -> None:
    """Put ``message`` on the bounded results queue, giving up (exit) once the parent is gone."""
    while True:
        try:
            results.put(message, timeout=PARENT_POLL_S)
            return
        except queue.Full:
            if os.getppid() != parent:
                raise SystemExit(1) from None


def _shard_process(
    tasks: Any, results: Any, parent: int, representation: Representation, min_steps: int
) -> None:
    """A forked helper: build the shards the parent queues until it queues None, report each.

    It ends with its parent: SIGTERM on the parent's death (Linux) or a poll of the parent's pid
    (elsewhere, and whenever the helper waits on a queue). It then exits through Python, so that a
    shard being written removes its temporary file, and does not wait to flush messages that no one
    will read.
    """

    def stop(*_: Any) -> None:
        results.cancel_join_thread()  # exiting must not block on a full pipe
        sys.exit(1)

    # SIGTERM also comes from the parent itself (an error or Ctrl-C there).
    signal.signal(signal.SIGTERM, stop)
    if not _die_with_parent(parent):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        while (task := _next_task(tasks, parent)) is not None:
            if os.getppid() != parent:
                stop()
            index, path, items = task
            _put(results, (index, _build_shard(path, items, representation, min_steps)), parent)
    except SystemExit:
        results.cancel_join_thread()
        raise
    except Exception:
        _put(results, ("error", traceback.format_exc()[-4000:]), parent)
        raise
    _put(results, None, parent)


def _run_shards(
    tasks: Iterator[ShardTask],
    n_jobs: int,
    representation: Representation,
    min_steps: int,
    done: Callable[[int, _ShardMeta], None],
) -> None:
    """Build every shard of the stream ``tasks`` with this process and ``n_jobs - 1`` forked helpers.

    This process cuts the stream into tasks and queues each for the helpers; when the queue is full
    (the helpers are busy) it builds that shard itself, so it works too and a 2-core machine runs one
    fork, not a pool of two. The queue is short (two tasks a helper), so only a few shards' items
    are ever in flight, whatever the corpus size. Each process writes the shards it builds: only a
    shard's small summary travels back (a pool that sent the encoded pieces back to the parent spent a
    third of the work pickling them). ``done(index, meta)`` is called in this process. The results
    queue is bounded so that a helper's put can time out and check that this process still lives.
    """
    if n_jobs <= 1:
        for index, path, items in tasks:
            done(index, _build_shard(path, items, representation, min_steps))
        return
    context = mp.get_context("fork")
    n_helpers = n_jobs - 1
    queued = context.Queue(maxsize=2 * n_helpers)
    results = context.Queue(maxsize=max(64, 8 * n_helpers))
    helpers = [
        context.Process(
            target=_shard_process,
            args=(queued, results, os.getpid(), representation, min_steps),
            daemon=True,
        )
        for _ in range(n_helpers)
    ]
    finished = 0

    def check_helpers() -> None:
        dead = [h for h in helpers if h.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(
                f"a preprocessing process died (exit code {dead[0].exitcode}); the shards "
                "written so far are kept and a re-run builds the rest"
            ) from None

    def drain(block: bool) -> None:
        nonlocal finished
        while finished < len(helpers):
            try:
                message = results.get(timeout=1.0) if block else results.get_nowait()
            except queue.Empty:
                check_helpers()
                if not block:
                    return
                continue
            if message is None:
                finished += 1
            elif message[0] == "error":
                raise RuntimeError(f"a preprocessing process failed:\n{message[1]}")
            else:
                done(*message)

    try:
        for helper in helpers:
            helper.start()
        for index, path, items in tasks:
            drain(block=False)
            try:
                queued.put_nowait((index, path, items))
            except queue.Full:  # every helper is busy: build this one here
                done(index, _build_shard(path, items, representation, min_steps))
        for _ in helpers:  # one end marker each, once they have room for it
            while True:
                drain(block=False)
                try:
                    queued.put(None, timeout=PARENT_POLL_S)
                    break
                except queue.Full:
                    continue
        drain(block=True)
    finally:
        for helper in helpers:
            # A helper that reported its last shard is only exiting (tearing down a forked copy of
            # this process takes ~15 ms): multiprocessing reaps it later, so do not wait for it.
            if finished < len(helpers) and helper.is_alive():
                helper.terminate()
                helper.join()
        queued.cancel_join_thread()  # tasks no helper will read must not hold up this process
        queued.close()
        results.close()


def _read_shard_meta(path: Path) -> _ShardMeta:
    # np.load of an .npz reads members lazily: this never touches "data".
    with np.load(path, allow_pickle=False) as f:
        routing = Routing(json.loads(str(f["routing"]))) if "routing" in f.files else Routing()
        return _ShardMeta(
            [int(n) for n in f["steps"]], [tuple(s) for s in json.loads(str(f["skipped"]))], routing
        )


def _read_shard_index(
    path: Path,
) -> tuple[np.ndarray, np.ndarray, list[str], list[str | None], list[tuple[str, str]]]:
    """A shard's piece row counts, steps, keys, splits and skipped files; not its notes."""
    with np.load(path, allow_pickle=False) as f:
        rows, steps = f["rows"], f["steps"]
        keys = [str(k) for k in f["keys"]]
        splits = [str(s) or None for s in f["splits"]]
        skipped = [tuple(s) for s in json.loads(str(f["skipped"]))]
    return rows, steps, keys, splits, skipped


class _ManifestTotals:
    """The manifest's figures, summed shard by shard as the shards are done (in any order)."""

    def __init__(self, first: int = 20) -> None:
        self.first = first
        self.pieces = 0
        self.steps = 0
        self.reasons: Counter[str] = Counter()
        self.first_skipped: list[tuple[int, int, str, str]] = []  # (shard, position, key, reason)
        self.routing = Routing()

    def add(self, index: int, meta: _ShardMeta) -> None:
        self.pieces += len(meta.steps)
        self.steps += int(sum(meta.steps))
        self.reasons.update(reason.split(":")[0] for _, reason in meta.skipped)
        self.first_skipped = sorted(
            self.first_skipped
            + [(index, k, key, reason) for k, (key, reason) in enumerate(meta.skipped[: self.first])]
        )[: self.first]
        self.routing.merge(meta.routing)

    def skipped_summary(self) -> dict[str, Any]:
        return {
            "skipped": sum(self.reasons.values()),
            "skipped_by_reason": dict(sorted(self.reasons.items())),
            "skipped_first": [f"{key} ({reason})" for _, _, key, reason in self.first_skipped],
        }


def _chunks(items: Iterator[SourceItem], size: int) -> Iterator[tuple[int, list[SourceItem]]]:
    """``(shard index, items)`` of consecutive ``size``-item pieces of a stream."""
    chunk: list[SourceItem] = []
    index = 0
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield index, chunk
            index, chunk = index + 1, []
    if chunk:
        yield index, chunk


def build_cache(
    source: Source,
    representation: Representation,
    cache_dir: str | Path,
    n_jobs: int | None = None,
    shard_size: int = 32,
    min_steps: int = 1,
    progress: bool = True,
) -> Path:
    """Preprocess ``source`` into ``cache_dir/<source>-<hash>/`` (reusing whole shards) and return it.

    ``shard_size`` pieces go to a shard; a shard is the unit of parallel work (each process writes the
    shards it builds) and of resuming. The shard layout depends only on the item list, so a resumed run
    with another ``n_jobs`` reuses what is done.
    """
    fingerprint = source.fingerprint()
    key = _hash_config(fingerprint, representation.to_config())
    directory = Path(expand_path(cache_dir)) / f"{source.name}-{key}"
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        log.info("Reusing preprocessed cache %s", directory)
        return directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataConfigError(
            f"paths.cache_dir={printable(str(cache_dir))}: cannot create {printable(str(directory))} "
            f"({exc.strerror}; set paths.cache_dir=/a/writable/folder)"
        ) from None
    source.prepare()
    n_jobs = max(1, n_jobs or (os.cpu_count() or 1))
    totals = _ManifestTotals()
    counts = {"todo": 0, "done": 0, "items": 0}

    def todo(chunks: Iterator[tuple[int, list[SourceItem]]]) -> Iterator[ShardTask]:
        # Shards already on disk (a resumed run) only add their figures, read without their notes.
        for index, items in chunks:
            path = directory / f"shard-{index:05d}.npz"
            counts["items"] += len(items)
            if path.is_file():
                counts["done"] += 1
                totals.add(index, _read_shard_meta(path))
            else:
                counts["todo"] += 1
                yield index, path, items

    # A short look ahead: a corpus of fewer shards than processes forks no more helpers than shards.
    chunks = _chunks(source.iter_items(), shard_size)
    tasks = todo(chunks)
    ahead = list(itertools.islice(tasks, n_jobs))
    n_jobs = max(1, min(n_jobs, len(ahead)))
    if ahead:
        log.info("Preprocessing %s into %s with %d processes", source.name, directory, n_jobs)
    bar = tqdm(desc=f"preprocess {source.name}", unit="piece", disable=not progress or not ahead)
    # Parsers (music21, muspy's MusicXML reader) allocate many small objects, and every full garbage
    # collection walks all objects alive, which in a process that imported torch and Lightning are
    # hundreds of thousands: freezing them out of the collector made MusicXML loading 3x faster.
    # Freezing before the fork also keeps the workers from touching (and so copying) those pages.
    froze = bool(ahead) and gc.get_freeze_count() == 0

    def done(index: int, meta: _ShardMeta) -> None:
        totals.add(index, meta)
        bar.update(len(meta.steps) + len(meta.skipped))

    try:
        if froze:
            gc.freeze()
        _run_shards(itertools.chain(ahead, tasks), n_jobs, representation, min_steps, done)
    finally:
        bar.close()
        if froze:
            gc.unfreeze()
    if counts["done"] and counts["todo"]:
        log.info("Resumed: %d shards were already built, %d built now", counts["done"], counts["todo"])
    manifest = {
        "source": fingerprint,
        "representation": representation.to_config(),
        "pieces": totals.pieces,
        "steps": totals.steps,
        **totals.skipped_summary(),
        "routing": totals.routing.summary(),
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, default=str))
    return directory


def load_cache(
    directory: str | Path, representation: Representation | None = None, require_manifest: bool = True
) -> CachedCorpus:
    """Read every shard of a cache directory; the pieces stay compact (see `CompactPieces`).

    ``representation`` must be the one the cache was built with; by default it is rebuilt from the
    manifest.
    """
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if require_manifest and not manifest_path.is_file():
        raise FileNotFoundError(f"{directory} is not a finished MuseLab cache (no manifest.json)")
    if representation is None:
        if not manifest_path.is_file():
            raise ValueError(f"{directory} has no manifest.json to say its representation: pass one")
        representation = build_representation(json.loads(manifest_path.read_text())["representation"])
    corpus = CachedCorpus([], [], [], [], directory)
    if manifest_path.is_file():
        corpus.routing = json.loads(manifest_path.read_text()).get("routing", {})
    blocks, sources, rows, steps = [], [], [], []
    for path in sorted(directory.glob("shard-*.npz")):
        shard_rows, shard_steps, keys, splits, skipped = _read_shard_index(path)
        if len(keys):
            # The notes stay in the file, mapped: pages are read when a window needs them.
            blocks.append(map_npz_member(path, "data"))
            sources.append((str(path), "data"))
            rows.append(shard_rows)
            steps.append(shard_steps)
        corpus.keys += keys
        corpus.splits += splits
        corpus.skipped += skipped
    all_steps = np.concatenate(steps) if steps else np.zeros(0, dtype=np.int64)
    corpus.arrays = CompactPieces.from_blocks(blocks, rows, representation, all_steps, sources)
    return corpus
