"""Preprocessing throughput: ``make bench-data`` (``python -m muselab.bench.data [key=value ...]``).

Times the data pipeline (source -> `NoteTable` -> representation -> cache shards, i.e.
`datamodules.cache.build_cache` into a fresh cache directory) on

- a folder of generated MIDI files (several tracks, a few thousand notes each, unquantised onsets,
  a drum track in some, control changes) read by `FolderSource` and encoded by the piano-roll of the
  ``folder`` data config; beside reading the same files with ``symusic.Score`` alone and with
  ``muspy.read_midi`` alone (one process each);
- the default ``bach`` source (the music21 corpus chorales, MusicXML) with the default piano-roll
  layout; beside reading the same files with ``muspy.read_musicxml`` alone.

The pipeline runs with each process count of ``jobs``. The issue's target is a pipeline rate of at
least 50 % of symusic's raw parse rate; the table gives the ratio for each process count, so
1 process against symusic's 1 process is the like-for-like figure. Times are the best of
``repeats`` runs (the bach and muspy rows run once: they take seconds per run). The results replace
the ``## Data preprocessing (make bench-data)`` section of ``docs`` (other sections are kept).

Arguments (``key=value``): ``files`` (400), ``notes`` (notes per file, 3000), ``seed`` (0),
``repeats`` (5), ``muspy_files`` (files read by the slow ``muspy.read_midi`` row, 100; 0: all),
``jobs`` (process counts of the pipeline, ``1,2``), ``bach`` (true), ``bach_limit`` (0: all),
``docs`` (docs/benchmarks.md; empty: do not write).
"""

from __future__ import annotations

import gc
import importlib.metadata
import inspect
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from muselab.bench.markdown import cpu_model, git_commit, replace_section, require_committed

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
SECTION = "## Data preprocessing (make bench-data)"
TARGET = 0.5  # the issue: pipeline >= 50 % of symusic's raw parse rate

DEFAULTS: dict[str, Any] = {
    "files": 400,
    "notes": 3000,
    "seed": 0,
    "repeats": 5,
    "muspy_files": 100,
    "jobs": "1,2",
    "bach": True,
    "bach_limit": 0,
    "docs": "docs/benchmarks.md",
    "allow_dirty": False,
}

# (GM program, lowest pitch, highest pitch, share of the notes): piano, bass, strings, guitar, flute.
TRACK_ROLES = [(0, 36, 96, 3.0), (33, 28, 52, 1.0), (48, 55, 84, 2.0), (25, 45, 76, 1.0), (73, 60, 96, 1.0)]


# ------------------------------------------------------------------------------------------- inputs
def generate_midi_folder(root: Path, n_files: int, notes_per_file: int, seed: int = 0) -> int:
    """Write ``n_files`` MIDI files of about ``notes_per_file`` notes under ``root``; return the note count.

    Each file has 3 to 5 pitched tracks (chords in the piano, unquantised onsets and durations at
    480 ticks per quarter), a drum track in half of them and sustain-pedal control changes, so both
    readers parse what real files carry.
    """
    import symusic

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tpq, sixteenth = 480, 120
    total = 0
    for i in range(n_files):
        score = symusic.Score(tpq)
        score.tempos.append(symusic.Tempo(0, float(rng.integers(70, 160))))
        score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
        roles = TRACK_ROLES[: int(rng.integers(3, 6))]
        with_drums = i % 2 == 0
        shares = np.array([r[3] for r in roles] + ([1.0] if with_drums else []))
        counts = rng.multinomial(notes_per_file, shares / shares.sum())
        grid = notes_per_file // 2  # about two notes per sixteenth over all tracks
        for n, role in zip(counts, [*roles, None]):
            onset = np.sort(rng.integers(0, grid, n)) * sixteenth + rng.integers(-12, 13, n)
            onset = np.maximum(onset, 0)
            if role is None:
                track = symusic.Track("Drums", 0, True)
                pitch, duration = rng.choice([36, 38, 42, 46, 49], n), np.full(n, 60)
            else:
                program, low, high, _ = role
                track = symusic.Track(f"Track {program}", program, False)
                pitch = rng.integers(low, high + 1, n)
                duration = rng.integers(1, 9, n) * sixteenth - rng.integers(0, 30, n)
            track.notes = symusic.Note.from_numpy(
                onset.astype(np.int32),
                duration.astype(np.int32),
                pitch.astype(np.int8),
                rng.integers(40, 120, n).astype(np.int8),
            )
            if role is not None and role[0] == 0:
                pedal = np.arange(0, grid * sixteenth, 4 * tpq)
                times = np.sort(np.concatenate([pedal, pedal + 3 * tpq])).astype(np.int32)
                values = np.tile(np.array([127, 0], dtype=np.uint8), len(pedal))
                track.controls = symusic.ControlChange.from_numpy(
                    times, np.full(len(times), 64, np.uint8), values
                )
            score.tracks.append(track)
            total += int(n)
        folder = root / f"{i // 100:02d}"  # sub-folders, as real collections have
        folder.mkdir(exist_ok=True)
        score.dump_midi(str(folder / f"song{i:04d}.mid"))
    return total


def layout_representation(data: str) -> Any:
    """The piano-roll a data config trains on: ``conf/train.yaml``'s layout, updated by ``conf/data/<data>.yaml``."""
    from omegaconf import OmegaConf

    from datamodules.representations import PianoRollRepresentation

    layout = OmegaConf.load(CONF_DIR / "train.yaml")["layout"]
    data_conf = OmegaConf.load(CONF_DIR / "data" / f"{data}.yaml")
    if "layout" in data_conf:
        layout = OmegaConf.merge(layout, data_conf["layout"])
    layout = OmegaConf.to_container(layout)
    return PianoRollRepresentation(
        n_tracks=layout["n_tracks"],
        track_mode=layout["track_mode"],
        track_names=layout["track_names"],
        program_groups=layout["program_groups"],
        steps_per_beat=layout["steps_per_beat"],
        pitch_low=layout["pitch_low"],
        pitch_high=layout["pitch_high"],
        programs=layout["programs"],
    )


# ------------------------------------------------------------------------------------------- timing
def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The smallest wall time of ``repeats`` calls of ``fn`` (the least disturbed run) and its result."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


@contextmanager
def lean_gc() -> Iterator[None]:
    """Keep the objects alive now (torch, Lightning, ...) out of the garbage collector.

    A reader timed alone in a fresh process would not walk this process's imports on every full
    collection; `build_cache` freezes them the same way, so the comparison is like for like.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def time_pipeline(source: Any, representation: Any, n_jobs: int, min_steps: int = 8) -> tuple[float, dict]:
    """Seconds for `build_cache` of ``source`` into a fresh cache directory, and its manifest."""
    from datamodules.cache import build_cache

    cache_dir = Path(tempfile.mkdtemp(prefix="muselab-bench-cache-"))
    try:
        start = time.perf_counter()
        directory = build_cache(
            source, representation, cache_dir, n_jobs=n_jobs, min_steps=min_steps, progress=False
        )
        seconds = time.perf_counter() - start
        manifest = json.loads((directory / "manifest.json").read_text())
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return seconds, manifest


def read_symusic(files: list[str]) -> int:
    """Parse every file with ``symusic.Score``; return the note count."""
    import symusic

    with lean_gc():
        return sum(symusic.Score(f).note_num() for f in files)


def read_muspy_midi(files: list[str]) -> int:
    """Parse every file with ``muspy.read_midi``; return the note count."""
    import muspy

    with lean_gc():
        return sum(len(t.notes) for f in files for t in muspy.read_midi(f).tracks)


def read_muspy_musicxml(files: list[str]) -> int:
    """Parse every file with ``muspy.read_musicxml``; return the note count."""
    import muspy

    with lean_gc():
        return sum(len(t.notes) for f in files for t in muspy.read_musicxml(f).tracks)


def row(name: str, processes: int, files: int, seconds: float, notes: int, **extra: Any) -> dict[str, Any]:
    """One table row."""
    return {
        "name": name,
        "processes": processes,
        "files": files,
        "seconds": seconds,
        "files_per_s": files / seconds,
        "notes_per_s": notes / seconds,
        **extra,
    }


def stage_breakdown(
    source: Any, representation: Any, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per file of each step of the n_jobs=1 pipeline, each timed alone (best of ``repeats``),
    and of loading the finished cache.

    The same work `build_cache` does per file, split up: where the time goes, and so what a faster
    pipeline would have to cut. Loading (`load_cache` reads the shards; expanding every piece to its
    roll is timed for comparison) is paid when a run starts, not when the cache is built.
    """
    import symusic

    from datamodules.cache import _write_shard, build_cache, load_cache
    from datamodules.notes import NoteTable

    items = source.items()
    n = len(items)
    stages: dict[str, float] = {}
    load: dict[str, float] = {}
    with lean_gc():
        t, _ = best_time(lambda: (source.fingerprint(), source.items()), repeats)
        stages["list and fingerprint the folder"] = t
        t, scores = best_time(lambda: [symusic.Score(item.path) for item in items], repeats)
        stages["parse (symusic.Score)"] = t
        t, tables = best_time(lambda: [NoteTable.from_symusic(score) for score in scores], repeats)
        stages["symusic -> NoteTable (note arrays)"] = t
        t, _ = best_time(lambda: [(table.n_notes, table.end_tick) for table in tables], repeats)
        stages["skip checks (note count, end tick)"] = t
        t, compacts = best_time(lambda: [representation.encode_compact(table) for table in tables], repeats)
        stages["encode (route, quantise: the roll's notes)"] = t
        size = inspect.signature(build_cache).parameters["shard_size"].default
        results = [(c, "") for c in compacts]
        steps = [representation.compact_steps(c) for c in compacts]
        with tempfile.TemporaryDirectory(prefix="muselab-bench-shard-") as tmp:

            def write() -> None:
                for k in range(0, n, size):
                    path = Path(tmp) / f"shard-{k // size:05d}.npz"
                    _write_shard(path, items[k : k + size], results[k : k + size], steps[k : k + size])

            t, _ = best_time(write, repeats)
            stages[f"write the shards (.npz, {size} files each)"] = t
            t, _ = best_time(lambda: load_cache(tmp, representation, require_manifest=False), repeats)
            load["`load_cache`: read the shards (the pieces stay compact)"] = t
            t, _ = best_time(lambda: [representation.expand(c) for c in compacts], repeats)
            load["expand every piece to its whole roll (not done by a run; for comparison)"] = t
    per_file = {name: seconds * 1e3 / n for name, seconds in stages.items()}
    return per_file, {name: seconds * 1e3 / n for name, seconds in load.items()}


def bench_midi_folder(args: dict[str, Any], jobs: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for the generated MIDI folder: symusic alone, muspy alone, the pipeline per process count."""
    from datamodules.sources import FolderSource

    representation = layout_representation("folder")
    with tempfile.TemporaryDirectory(prefix="muselab-bench-midi-") as tmp:
        root = Path(tmp) / "midi"
        n_notes = generate_midi_folder(root, args["files"], args["notes"], args["seed"])
        files = sorted(str(p) for p in root.rglob("*.mid"))
        size_mb = sum(Path(f).stat().st_size for f in files) / 1e6
        source = FolderSource(str(root))
        # Warm up: imports (symusic is imported lazily) and the page cache, outside every timing.
        read_symusic(files[:5])
        read_muspy_midi(files[:2])
        time_pipeline(FolderSource(str(root / "00")), representation, 1)

        times: dict[str, float] = {}
        manifests: dict[int, dict] = {}
        notes_read = 0
        # Interleave the methods over the repeats so that load from elsewhere hits them alike.
        for _ in range(max(1, args["repeats"])):
            t, notes_read = best_time(lambda: read_symusic(files), 1)
            times["symusic"] = min(times.get("symusic", t), t)
            for n_jobs in jobs:
                t, manifests[n_jobs] = time_pipeline(source, representation, n_jobs)
                times[f"jobs{n_jobs}"] = min(times.get(f"jobs{n_jobs}", t), t)
        assert notes_read == n_notes, (notes_read, n_notes)
        muspy_files = files[: args["muspy_files"]] if args["muspy_files"] else files
        t_muspy, muspy_notes = best_time(lambda: read_muspy_midi(muspy_files), 1)
        stages, load_ms = stage_breakdown(source, representation, args["repeats"])

    symusic_rate = len(files) / times["symusic"]
    rows = [row("`symusic.Score` alone", 1, len(files), times["symusic"], n_notes)]
    rows.append(row("`muspy.read_midi` alone", 1, len(muspy_files), t_muspy, muspy_notes))
    for n_jobs in jobs:
        r = row(
            f"MuseLab pipeline (`build_cache`, n_jobs={n_jobs})",
            n_jobs,
            len(files),
            times[f"jobs{n_jobs}"],
            n_notes,
            pieces=manifests[n_jobs]["pieces"],
            skipped=manifests[n_jobs]["skipped"],
        )
        rows.append(r)
    for r in rows:
        r["vs_symusic"] = r["files_per_s"] / symusic_rate
    info = {
        "files": len(files),
        "notes": n_notes,
        "size_mb": size_mb,
        "representation": representation.to_config(),
        "stages_ms": stages,
        "load_ms": load_ms,
    }
    return rows, info


def bench_bach(args: dict[str, Any], jobs: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for the default ``bach`` source: the pipeline per process count, and muspy's reader alone."""
    from datamodules.sources import Music21CorpusSource

    source = Music21CorpusSource("bach", limit=args["bach_limit"] or None)
    representation = layout_representation("bach")
    files = [item.path for item in source.items()]
    read_muspy_musicxml(files[:2])  # warm up music21's and muspy's imports
    t_raw, n_notes = best_time(lambda: read_muspy_musicxml(files), 1)
    rows = [row("`muspy.read_musicxml` alone", 1, len(files), t_raw, n_notes)]
    for n_jobs in jobs:
        seconds, manifest = time_pipeline(source, representation, n_jobs)
        rows.append(
            row(
                f"MuseLab pipeline (`build_cache`, n_jobs={n_jobs})",
                n_jobs,
                len(files),
                seconds,
                n_notes,
                pieces=manifest["pieces"],
                skipped=manifest["skipped"],
            )
        )
    for r in rows:
        r["vs_muspy"] = r["files_per_s"] / rows[0]["files_per_s"]
    info = {"files": len(files), "notes": n_notes, "representation": representation.to_config()}
    info["windows"] = bench_windows(source, representation, args["repeats"])
    return rows, info


def bench_windows(source: Any, representation: Any, repeats: int, window: int = 64) -> dict[str, Any]:
    """The training split in memory and the cost of one training window: pieces kept as notes
    (`CompactPieces`, what `MusicDataModule` does) against the same pieces as dense rolls."""
    from datamodules import MusicDataModule, WindowDataset

    with tempfile.TemporaryDirectory(prefix="muselab-bench-windows-") as tmp:
        dm = MusicDataModule(source, representation, cache_dir=tmp, window=window, n_jobs=1)
        dm.prepare_data()
        dm.setup()
        pieces = dm.split_arrays["train"]
        dense = [pieces[i] for i in range(len(pieces))]
        from_notes = dm.datasets["train"]
        from_rolls = WindowDataset(dense, representation, window, dm.stride)
        n = len(from_notes)
        t_notes, _ = best_time(lambda: [from_notes[i] for i in range(n)], repeats)
        t_rolls, _ = best_time(lambda: [from_rolls[i] for i in range(n)], repeats)
    return {
        "window": window,
        "pieces": len(pieces),
        "windows": n,
        "notes_mb": pieces.nbytes / 1e6,
        "rolls_mb": sum(a.nbytes for a in dense) / 1e6,
        "notes_us": t_notes * 1e6 / n,
        "rolls_us": t_rolls * 1e6 / n,
    }


# ------------------------------------------------------------------------------------------- report
def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def parallel_speedup(processes: int = 2, n: int = 2_000_000) -> float:
    """Speed-up of ``processes`` processes over one on pure-Python CPU work: the cores really free.

    On a machine shared with other jobs this is what bounds the pipeline's n_jobs>1 rows.
    """
    import multiprocessing as mp

    start = time.perf_counter()
    for _ in range(processes):
        _burn(n)
    serial = time.perf_counter() - start
    with mp.get_context("fork").Pool(processes) as pool:
        pool.map(_burn, [n // 100] * processes)  # started and warm before timing
        start = time.perf_counter()
        pool.map(_burn, [n] * processes)
        parallel = time.perf_counter() - start
    return serial / parallel


def machine() -> dict[str, Any]:
    """Hardware, load and library versions, for the report."""
    versions = {}
    for package in ("numpy", "muspy", "music21", "symusic", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "-"
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load": os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0),
    }


def _table(rows: list[dict[str, Any]], ratio_key: str, ratio_title: str) -> list[str]:
    lines = [
        f"| reader / pipeline | processes | files | time (s) | files/s | notes/s | {ratio_title} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['processes']} | {r['files']} | {r['seconds']:.2f} | "
            f"{r['files_per_s']:,.0f} | {r['notes_per_s'] / 1e6:.2f} M | {_percent(r[ratio_key])} |"
        )
    return lines


def render_section(
    midi_rows: list[dict[str, Any]],
    midi_info: dict[str, Any],
    bach_rows: list[dict[str, Any]] | None,
    bach_info: dict[str, Any] | None,
    meta: dict[str, Any],
) -> str:
    """The whole ``## Data preprocessing (make bench-data)`` section as markdown."""
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        SECTION,
        "",
        f"Command: `{meta['command']}`, i.e. `{meta['python_command']}` (run {meta['date']} at commit "
        f"{meta.get('commit', 'not recorded')}; {meta['wall_s']:.0f} s in all).",
        "",
        f"Machine: `nproc` = {m['nproc']}, CPU {m['cpu']}, {m['platform']}, Python {m['python']}; "
        f"{versions}. Load average (1 min) {meta['load_start']:.1f} at the start and "
        f"{meta['load_end']:.1f} at the end: the machine is shared, so every figure is the best of "
        f"{meta['repeats']} runs (the muspy and bach rows: one run). A pure-CPU probe ran "
        f"{meta['speedups'][0]:.2f}x (start) and {meta['speedups'][1]:.2f}x (end) faster on "
        f"{meta['probe_processes']} processes than on one: that bounds what n_jobs="
        f"{meta['probe_processes']} can gain here.",
        "",
        "Each pipeline row is `datamodules.cache.build_cache` into a fresh, empty cache directory: "
        "listing and fingerprinting the files, parsing (symusic for MIDI, muspy/music21 for "
        "MusicXML), encoding each piece to what the cache stores for a piano-roll (its notes routed "
        "to tracks and quantised to steps; `PianoRollRepresentation.encode_compact`), and writing "
        "the shards and the manifest. *processes* is the `n_jobs` the cache ran with (this process "
        "and `n_jobs - 1` forked ones share the shards); the reader rows run in one process. "
        "notes/s counts the notes in the input files.",
        "",
        f"### Generated MIDI folder ({midi_info['files']} files, {midi_info['notes']:,} notes, "
        f"{midi_info['size_mb']:.1f} MB)",
        "",
        "3 to 5 pitched tracks and a drum track in every other file, 480 ticks per quarter, "
        "unquantised onsets, sustain-pedal control changes; encoded by the `folder` data config's "
        f"piano-roll ({_rep_summary(midi_info['representation'])}).",
        "",
        *_table(midi_rows, "vs_symusic", "of symusic's rate"),
        "",
    ]
    pipeline = [r for r in midi_rows if r["name"].startswith("MuseLab")]
    verdicts = [
        f"n_jobs={r['processes']}: {_percent(r['vs_symusic'])} "
        f"({'met' if r['vs_symusic'] >= TARGET else 'missed'})"
        for r in pipeline
    ]
    lines += [
        f"Target (the issue): pipeline rate >= {TARGET:.0%} of symusic's raw parse rate. "
        f"Like for like (1 process against symusic's 1 process) and with more processes: "
        f"{'; '.join(verdicts)}.",
        "",
    ]
    stages = midi_info.get("stages_ms") or {}
    if stages:
        parse = stages.get("parse (symusic.Score)", 0.0)
        lines += [
            "Where the n_jobs=1 pipeline's time goes: each step timed alone over all files, in one "
            "process (best of the runs). To reach the target, everything but the parse would have to "
            "cost no more than the parse itself.",
            "",
            "| step | ms per file | x the parse |",
            "|---|---:|---:|",
            *[f"| {name} | {ms:.3f} | {ms / parse if parse else 0:.2f} |" for name, ms in stages.items()],
            f"| **sum** | **{sum(stages.values()):.3f}** | **{sum(stages.values()) / parse if parse else 0:.2f}** |",
            "",
        ]
        if parse:
            lines += [
                f"The steps sum to {sum(stages.values()) / parse:.1f}x the parse, so one process can "
                f"reach at most about {parse / sum(stages.values()):.0%} of the bare parse rate.",
                "",
            ]
    load = midi_info.get("load_ms") or {}
    if load:
        lines += [
            "Loading the finished cache, which each run's `setup()` does (not part of the rows above). "
            "The pieces stay as notes in memory (`CompactPieces`); the data loader draws each training "
            "window from the notes that overlap it.",
            "",
            "| load step | ms per file |",
            "|---|---:|",
            *[f"| {name} | {ms:.3f} |" for name, ms in load.items()],
            "",
        ]
    if bach_rows and bach_info:
        lines += [
            f"### Bach chorales (`DATA=bach`: music21 corpus, {bach_info['files']} MusicXML files, "
            f"{bach_info['notes']:,} notes)",
            "",
            f"Default piano-roll layout ({_rep_summary(bach_info['representation'])}). There is no "
            "MIDI to compare with symusic here: the reference is muspy's MusicXML reader, which the "
            "`musicxml` loader calls.",
            "",
            *_table(bach_rows, "vs_muspy", "of muspy's rate"),
            "",
        ]
        w = bach_info.get("windows")
        if w:
            lines += [
                f"Training split in memory and one training example ({w['window']} steps, "
                f"`dataset[i]`, every one of the {w['windows']:,} windows of {w['pieces']} pieces, best "
                "of the runs):",
                "",
                "| pieces kept as | memory (MB) | µs per window |",
                "|---|---:|---:|",
                f"| notes (`CompactPieces`, what `MusicDataModule` does) | {w['notes_mb']:.1f} | "
                f"{w['notes_us']:.0f} |",
                f"| dense rolls | {w['rolls_mb']:.1f} | {w['rolls_us']:.0f} |",
                "",
            ]
    if meta.get("notes"):
        lines += ["### Notes", "", meta["notes"].strip(), ""]
    return "\n".join(lines)


def _percent(ratio: float) -> str:
    return f"{ratio:.0%}" if ratio >= 0.095 else f"{ratio:.1%}"


def _rep_summary(config: dict[str, Any]) -> str:
    return (
        f"{config['n_tracks']} tracks by {config['track_mode']}, pitches "
        f"{config['pitch_low']}..{config['pitch_high']}, {config['steps_per_beat']} steps per beat"
    )


NOTES = """\
- What changed in this round (old code against new, back to back on the machine above, same 400
  files, best of 5): 1,370 -> 2,240 files/s with n_jobs=1 and 1,070 -> 3,400 with n_jobs=2.
  - The cache stores a piano-roll as its notes, routed and quantised, one int32 row
    `(onset, end, track * pitches + pitch)` each, instead of the bit-packed roll. Encoding is one
    pass of array arithmetic per piece (0.047 ms per file, against 0.146 to draw the roll plus 0.089
    to pack it), and the cache is smaller (13.5 MB against 24.1 MB here). Loading it and drawing
    every roll was faster than loading and unpacking the old one (0.109 against 0.125 ms per file),
    so no work moved from preprocessing to the start of each run; since then a run draws only the
    windows it trains on (`CompactPieces`), and `load_cache` just reads the shards.
  - Each process writes the shards it builds, so no encoded piece is pickled back to the parent (the
    pool did that, and it cost about a third of the work). The parent works too, beside
    `n_jobs - 1` forked helpers that take shards from a shared counter: one fork costs ~13 ms here
    with torch imported, against ~50 ms to start and stop a pool of two. Shards of 32 pieces instead
    of 512 let the two processes finish together.
  - Listing: one `os.scandir` walk, and keys cut from path strings instead of `Path.relative_to`
    (0.037 -> 0.019 ms per file for fingerprint + items). `NoteTable.from_symusic` fills the columns
    of one array instead of stack + astype (0.106 -> 0.085 ms per file).
- The earlier round: the piano-roll encoder had filled the roll with one Python slice per note, over
  ten times the cost of the parse (147 -> ~1,100 files/s), and `build_cache` keeps the objects alive
  before it starts (torch, Lightning: ~430k) out of the garbage collector while it runs, which made
  MusicXML loading about 3x faster.
- Fixed costs (the fork, listing, the manifest) weigh less on a larger folder: with 2,000 files of
  the same kind (`make bench-data files=2000 bach=false docs=`, run once on 2026-11-24 on this
  machine) the pipeline ran at 63 % of symusic's rate with n_jobs=2 and 35 % with n_jobs=1.
- The rows above are one run of the benchmark. Over the six runs of 2026-11-24 after these
  changes (`make bench-data`, same machine), the pipeline reached 53-63 % of symusic's rate with
  n_jobs=2 and 34-42 % with n_jobs=1, as symusic's own rate moved between 5,400 and 6,800 files/s.
- The target is met with the default `n_jobs` (all cores, 2 here) and missed in one process. The
  step table says why: symusic's own conversion of its note lists to numpy (`NoteList.numpy()`, in
  its C++: ~3.5 us per track plus ~11 ns per note on these files) costs half the parse by itself,
  so parse + conversion alone would cap one process at about two thirds of the bare parse rate, and
  routing, quantising, the skip checks and writing bring it to about 40 %.
- Bach: the MusicXML loader reads the part names ("Soprano", ...) that route voices to tracks with
  a second parse of the file; it now stops at the end of the part list, which comes first
  (2.3-3.2 -> 0.8 ms per chorale, measured once over the 410 chorales).
- Tried and not taken: symusic's own C++ path (`Score.resample(tpq=4, min_dur=1)` then
  `Track.pianoroll(modes=["frame"], ...)`) costs 0.05 + 0.30 ms per file on these files, more than
  `NoteTable.from_symusic` + drawing the roll in numpy (0.10 + 0.15 ms); measured once on 200
  generated files (3,000 notes each, best of 3) with `generate_midi_folder` from
  `muselab/bench/data.py`."""


def print_rows(title: str, rows: list[dict[str, Any]], ratio_key: str) -> None:
    print(f"\n{title}")
    for r in rows:
        print(
            f"  {r['name']:<46} procs {r['processes']}  {r['files']:>4} files  {r['seconds']:7.2f} s  "
            f"{r['files_per_s']:8.0f} files/s  {r['notes_per_s'] / 1e6:6.2f} M notes/s  "
            f"{_percent(r[ratio_key]):>6}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the docs section; returns the rows."""
    from muselab.cli import parse_kv_args

    argv = sys.argv[1:] if argv is None else argv
    args = parse_kv_args(argv, DEFAULTS)
    commit = require_committed(ROOT, args["allow_dirty"]) if args["docs"] else git_commit(ROOT)
    jobs = [int(j) for j in str(args["jobs"]).split(",") if j.strip()]
    start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    speedup_start = parallel_speedup(max(jobs))
    midi_rows, midi_info = bench_midi_folder(args, jobs)
    print_rows("Generated MIDI folder", midi_rows, "vs_symusic")
    bach_rows, bach_info = bench_bach(args, jobs) if args["bach"] else (None, None)
    if bach_rows:
        print_rows("Bach chorales", bach_rows, "vs_muspy")
    speedups = (speedup_start, parallel_speedup(max(jobs)))
    meta = {
        "probe_processes": max(jobs),
        "speedups": speedups,
        "command": " ".join(["make bench-data", *argv]),
        "python_command": " ".join([".venv/bin/python -m muselab.bench.data", *argv]),
        "date": date.today().isoformat(),
        "wall_s": time.perf_counter() - start,
        "machine": machine(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
        "repeats": args["repeats"],
        "notes": NOTES,
        "commit": commit,
    }
    print(
        f"\nparallel probe: {max(jobs)} processes ran {speedups[0]:.2f}x (start) / {speedups[1]:.2f}x (end) "
        f"faster than one; load average {meta['load_start']:.1f} -> {meta['load_end']:.1f}"
    )
    if args["docs"]:
        path = Path(args["docs"])
        path = path if path.is_absolute() else ROOT / path
        replace_section(path, SECTION, render_section(midi_rows, midi_info, bach_rows, bach_info, meta))
        print(f"\nwrote the section {SECTION!r} of {path}")
    return {"midi": midi_rows, "bach": bach_rows, "meta": meta}


if __name__ == "__main__":
    main()
