"""Lakh-scale preprocessing and loading: ``make bench-scale [files=50000] [sizes=5000,20000,50000]``.

On a generated corpus of ``files`` MIDI files (`muselab.bench.data.generate_midi_folder`: 3 to 5
pitched tracks, drums in half, unquantised, sustain pedal; ``notes`` notes each), for nested corpora
of each of ``sizes`` files (the first folders of the same corpus), each in a fresh process:

- ``build_cache`` with every core: files/s and the peak resident memory of the parent and of its
  helper processes, beside the memory of the same process before it started (imports);
- once more in one process at the largest size, for the rate of one core;
- loading the largest cache (``MusicDataModule.setup``): the memory a run holds for its splits, and
  the DataLoader's training windows per second with 0 and 1 worker processes, against what a GPU step
  takes (the default model on an H100: docs/benchmarks.md, *GPU runs*);
- the projection for the full Lakh MIDI Dataset (176,581 files) on 16 cores.

Writes the section *Lakh-scale preprocessing* of docs/benchmarks.md (``docs=`` to skip).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from muselab.bench.markdown import cpu_model, git_commit, replace_section, require_committed

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Lakh-scale preprocessing (make bench-scale)"
LAKH_FILES = 176_581  # lmd_full
# The default model on one H100 in bf16: 44 train batches/s of 64 windows (docs/benchmarks.md, GPU runs).
GPU_WINDOWS_PER_S = 44.0 * 64
DEFAULTS: dict[str, Any] = {
    "files": 50_000,
    "sizes": "5000,20000,50000",
    "notes": 2000,
    "jobs": 0,  # 0: every core
    "corpus": "/tmp/muselab-bench-scale",  # kept between runs (generating 50k files takes minutes)
    "batches": 300,
    "batch_size": 64,
    "window": 64,
    "project_cores": 16,
    "docs": "docs/benchmarks.md",
    "allow_dirty": False,
}
FILES_PER_FOLDER = 100  # as generate_midi_folder writes them


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory (ru_maxrss, KB on Linux) of this process or its largest reaped child."""
    return resource.getrusage(who).ru_maxrss / 1024


def representation() -> Any:
    from muselab.bench.data import layout_representation

    return layout_representation("lakh")


def ensure_corpus(root: Path, files: int, notes: int) -> Path:
    """The generated corpus (made once; a marker says it is complete)."""
    from muselab.bench.data import generate_midi_folder

    marker = root / f".complete-{files}-{notes}"
    if not marker.is_file():
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        generate_midi_folder(root / "all", files, notes)
        print(f"generated {files} files in {time.perf_counter() - start:.0f} s", flush=True)
        marker.touch()
    return root / "all"


def corpus_view(root: Path, all_files: Path, size: int) -> Path:
    """A folder that holds the first ``size`` files of the corpus (links to its first folders)."""
    view = root / f"view-{size}"
    if not view.is_dir():
        view.mkdir(parents=True)
        for folder in sorted(all_files.iterdir())[: size // FILES_PER_FOLDER]:
            (view / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return view


def child_build(folder: str, cache: str, jobs: int) -> dict[str, Any]:
    """In a fresh process: build the cache of ``folder``; time and memory."""
    import datamodules  # noqa: F401 - imports before the baseline
    from datamodules.cache import build_cache
    from datamodules.sources import FolderSource

    rep = representation()
    baseline = rss_mb()
    start = time.perf_counter()
    directory = build_cache(FolderSource(folder), rep, cache, n_jobs=jobs or None, progress=False)
    seconds = time.perf_counter() - start
    for helper in multiprocessing.active_children():  # reaped, so that RUSAGE_CHILDREN counts them
        helper.join()
    manifest = json.loads((directory / "manifest.json").read_text())
    return {
        "seconds": seconds,
        "pieces": manifest["pieces"],
        "skipped": manifest["skipped"],
        "baseline_mb": baseline,
        "parent_peak_mb": peak_mb(),
        "helper_peak_mb": peak_mb(resource.RUSAGE_CHILDREN),
        "cache_mb": sum(p.stat().st_size for p in directory.glob("shard-*.npz")) / 1e6,
    }


def child_load(folder: str, cache: str, batches: int, batch_size: int, window: int) -> dict[str, Any]:
    """In a fresh process: `MusicDataModule.setup` on a built cache, then DataLoader windows/s."""
    import torch

    from datamodules import MusicDataModule
    from datamodules.sources import FolderSource

    torch.set_num_threads(1)
    baseline = rss_mb()
    dm = MusicDataModule(FolderSource(folder), representation(), cache, window=window, batch_size=batch_size)
    start = time.perf_counter()
    dm.setup()
    setup_s = time.perf_counter() - start
    after_setup = rss_mb()
    train = dm.split_arrays["train"]
    out: dict[str, Any] = {
        "setup_s": setup_s,
        "baseline_mb": baseline,
        "setup_mb": after_setup - baseline,
        "pieces": sum(len(dm.split_arrays[s]) for s in ("train", "val", "test")),
        "train_windows": len(dm.datasets["train"]),
        "notes_mb": train.nbytes / 1e6,
        "resident_mb": train.resident_nbytes / 1e6,
    }
    for workers in (0, 1):
        dm.num_workers = workers
        loader = dm.train_dataloader()
        iterator = iter(loader)
        next(iterator)  # workers started, first pages read
        start = time.perf_counter()
        n = 0
        for _ in range(batches):
            n += len(next(iterator)["x"])
        out[f"windows_per_s_{workers}"] = n / (time.perf_counter() - start)
        del iterator, loader
    out["peak_mb"] = peak_mb()
    return out


def run_child(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "muselab.bench.scale", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def render(
    meta: dict[str, Any], builds: list[dict[str, Any]], single: dict[str, Any], load: dict[str, Any]
) -> str:
    cores = os.cpu_count() or 1
    top = builds[-1]
    rate_all = top["files"] / top["seconds"]
    rate_one = single["files"] / single["seconds"]
    efficiency = rate_all / (rate_one * top["jobs"])
    projected = LAKH_FILES / (rate_one * meta["project_cores"] * efficiency)
    per_worker = max(load["windows_per_s_0"], load["windows_per_s_1"])
    workers_needed = max(1, math.ceil(GPU_WINDOWS_PER_S / per_worker))
    lines = [
        SECTION,
        "",
        f"Command: `{meta['command']}` (`{meta['python_command']}`), run {meta['date']} at commit "
        f"`{meta['commit']}`, {meta['wall_s'] / 60:.1f} min in all.",
        "",
        f"Machine: {cores} cores ({meta['cpu']}, shared with other work: load average "
        f"{meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end), no GPU; torch threads 1 "
        "in the loading process. Every figure is one run, each build and load in a fresh process.",
        "",
        f"Corpus: {meta['files']:,} generated MIDI files (`generate_midi_folder`: 3-5 pitched tracks, drums "
        f"in half, unquantised onsets, sustain pedal; {meta['notes']:,} notes each, "
        f"{meta['corpus_mb']:,.0f} MB), in folders of 100; each smaller corpus is the first folders of "
        "it. Encoded by the `lakh` data config's piano-roll (4 tracks by program, pitches 24..96, 4 steps "
        "per beat), 32 files a shard.",
        "",
        "### Preprocessing: rate and peak memory against corpus size",
        "",
        "Peak resident memory (ru_maxrss) of the parent (it lists the files, queues shards, builds "
        "shards too and sums the manifest) and of its forked helper, beside the parent's resident "
        "memory before `build_cache` started (Python, numpy, torch and the MuseLab modules).",
        "",
        "| files | processes | time (s) | files/s | parent before (MB) | parent peak (MB) | helper peak (MB) | cache (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in [*builds, single]:
        lines.append(
            f"| {row['files']:,} | {row['jobs']} | {row['seconds']:.1f} | {fmt(row['files'] / row['seconds'])} | "
            f"{row['baseline_mb']:.0f} | {row['parent_peak_mb']:.0f} | "
            f"{row['helper_peak_mb']:.0f} | {row['cache_mb']:.0f} |"
        )
    growth = top["parent_peak_mb"] - builds[0]["parent_peak_mb"]
    lines += [
        "",
        f"From {builds[0]['files']:,} to {top['files']:,} files the parent's peak moved by {growth:+.0f} MB "
        f"and the helper's by {top['helper_peak_mb'] - builds[0]['helper_peak_mb']:+.0f} MB: flat. Items "
        "stream from a sorted walk of the folders into shards of 32, a shard's items go to a process as "
        "soon as they are cut (at most two shards queued per helper), and the manifest is summed shard by "
        "shard; nothing holds a list of the whole corpus. (The code before this kept the item list, the "
        "sorted file list and every shard's metadata: about 690 bytes a file in "
        "`tests/test_scale.py`'s measurement, some 120 MB for Lakh, and it kept growing with the corpus.)",
        "",
        "### Loading: what a run holds, and the data loader's rate",
        "",
        f"`MusicDataModule.setup()` on the {top['files']:,}-file cache (it walks and stats the files to find "
        f"the cache by its fingerprint, then reads the shards' indexes): {load['setup_s']:.1f} s, "
        f"{load['pieces']:,} pieces, {load['train_windows']:,} training windows of {meta['window']} steps. "
        f"The training split's notes are {load['notes_mb']:,.0f} MB on disk and memory-mapped "
        f"(`CompactPieces` over the shards); the split object holds {load['resident_mb']:.1f} MB "
        f"(a few integers a piece), and the process grew by {load['setup_mb']:.0f} MB in all during "
        f"`setup()` (the piece keys and splits, the index arrays, the mapped pages read so far); its peak "
        f"was {load['peak_mb']:.0f} MB. A split larger than memory stays on disk: the page cache keeps "
        "what is read often.",
        "",
        "| DataLoader workers | training windows/s (batch 64, shuffled, one process of torch threads 1) |",
        "|---:|---:|",
        f"| 0 (in the training process) | {fmt(load['windows_per_s_0'])} |",
        f"| 1 | {fmt(load['windows_per_s_1'])} |",
        "",
        f"A GPU step of the default model on an H100 (bf16) takes 64 windows at 44 batches/s: "
        f"{fmt(GPU_WINDOWS_PER_S)} windows/s, the fastest step of the models measured there (a small "
        f"LSTM). One loader process here delivers {fmt(per_worker)} windows/s "
        f"({per_worker / GPU_WINDOWS_PER_S:.1f}x that, on a machine whose other work took most of its "
        f"cores), so `data.num_workers={workers_needed}` per GPU keeps that step fed; a machine with 16 "
        "cores for 8 GPUs has 2 loader processes per GPU beside the training processes, and larger "
        "models take longer steps and need fewer. The data pipeline is not the bottleneck of a GPU step "
        "when `data.num_workers` is set (it is 0 by default, for the CPU).",
        "",
        "### Projection: the full Lakh MIDI Dataset (176,581 files) on 16 cores",
        "",
        f"One process ran at {fmt(rate_one)} files/s and {top['jobs']} at {fmt(rate_all)} files/s "
        f"({efficiency:.0%} of {top['jobs']}x one: the rest is this shared machine and the parent's "
        f"listing), so 16 cores at the same efficiency would take about {projected / 60:.1f} min "
        f"({fmt(projected)} s) for 176,581 files of this kind, with a flat peak memory: "
        f"~{top['parent_peak_mb']:.0f} MB for the parent and ~{top['helper_peak_mb']:.0f} MB per helper "
        "(a helper's resident memory counts the pages it shares with the parent, which forked it: what "
        f"it adds is its peak less the parent's {top['baseline_mb']:.0f} MB before the build). Not measured "
        "on real Lakh files: they vary more in size (a few thousand notes on average, some far more), "
        "and a few percent are broken and skipped; a slow disk would bound the rate before the cores do.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from muselab.cli import parse_kv_args

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("child-build", "child-load"):
        result = (
            child_build(*argv[1:3], int(argv[3]))
            if argv[0] == "child-build"
            else child_load(argv[1], argv[2], *map(int, argv[3:6]))
        )
        print(json.dumps(result))
        return result
    args = parse_kv_args(argv, DEFAULTS)
    commit = require_committed(ROOT, args["allow_dirty"]) if args["docs"] else git_commit(ROOT)
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    root = Path(args["corpus"])
    all_files = ensure_corpus(root, args["files"], args["notes"])
    jobs = args["jobs"] or os.cpu_count() or 1
    sizes = [int(s) for s in str(args["sizes"]).split(",")]
    builds = []
    with tempfile.TemporaryDirectory(prefix="muselab-bench-scale-cache-") as caches:
        for size in sizes:
            view = corpus_view(root, all_files, size)
            row = run_child("child-build", str(view), f"{caches}/{size}", str(jobs))
            builds.append({"files": size, "jobs": jobs, **row})
            print(json.dumps(builds[-1]), flush=True)
        largest = str(corpus_view(root, all_files, sizes[-1]))
        single = {"files": sizes[-1], "jobs": 1, **run_child("child-build", largest, f"{caches}/one", "1")}
        print(json.dumps(single), flush=True)
        load = run_child(
            "child-load",
            largest,
            f"{caches}/{sizes[-1]}",
            str(args["batches"]),
            str(args["batch_size"]),
            str(args["window"]),
        )
        print(json.dumps(load), flush=True)
    meta = {
        "command": " ".join(["make bench-scale", *argv]),
        "python_command": " ".join([".venv/bin/python -m muselab.bench.scale", *argv]),
        "date": date.today().isoformat(),
        "commit": commit,
        "cpu": cpu_model(),
        "files": args["files"],
        "notes": args["notes"],
        "window": args["window"],
        "project_cores": args["project_cores"],
        "corpus_mb": sum(f.stat().st_size for f in all_files.rglob("*.mid")) / 1e6,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "wall_s": time.perf_counter() - start,
    }
    text = render(meta, builds, single, load)
    print(text)
    if args["docs"]:
        path = Path(args["docs"])
        replace_section(path if path.is_absolute() else ROOT / path, SECTION, text)
    return {"builds": builds, "single": single, "load": load, "meta": meta}


if __name__ == "__main__":
    main()
