"""What the first run gives a newcomer: ``make bench-default``.

Runs ``make train`` exactly as a user types it (plus each variant's overrides), timed, then
``make evaluate CKPT=<best> N=16`` on it, and writes the ``## Default training run (make
bench-default)`` section of ``docs/benchmarks.md``: wall time, validation loss per epoch (read from
the offline W&B run), test NLL, the samples' overlap with real test music per metric and its mean,
and memorisation, each row with the commit it ran at.

Arguments (``key=value``): ``variants`` (``;``-separated groups of overrides, ``default`` for none;
default ``default;model.head=bernoulli``: today's default and the previous one), ``n`` (16),
``docs`` (docs/benchmarks.md; empty: print only), ``allow_dirty`` (false).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from muselab.bench.markdown import cpu_model, read_section, replace_section, require_committed
from muselab.cli import parse_kv_args
from muselab.wandb_offline import read_run

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Default training run (make bench-default)"
DATA_MARK = "<!-- bench-default-data "
DEFAULTS: dict[str, Any] = {
    "variants": "default;model.head=bernoulli",
    "n": 16,
    "docs": "docs/benchmarks.md",
    "allow_dirty": False,
}


def run_variant(overrides: list[str], n: int) -> dict[str, Any]:
    """``make train`` with ``overrides``, then ``make evaluate`` on its best checkpoint."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    train = subprocess.run(["make", "train", *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = train.stdout + train.stderr
    if train.returncode != 0:
        raise RuntimeError(f"make train {' '.join(overrides)} failed:\n{log[-3000:]}")
    run_dir = Path(re.findall(r"Run directory: (\S+)", log)[-1])
    best = re.findall(r"Best checkpoint: (\S+)", log)[-1]
    threads = int(re.findall(r"torch CPU threads: (\d+)", log)[-1])
    [wandb_dir] = sorted((run_dir / "wandb").glob("offline-run-*"))[-1:]
    run = read_run(wandb_dir)
    val = [v for _, v in run.series("val/loss")]
    evaluate = subprocess.run(
        ["make", "evaluate", f"CKPT={best}", f"N={n}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if evaluate.returncode != 0:
        raise RuntimeError(f"make evaluate failed:\n{(evaluate.stdout + evaluate.stderr)[-3000:]}")
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    metrics = report["metrics"]
    overlaps = {
        k.split("overlap_", 1)[1]: v
        for k, v in metrics.items()
        if k.startswith("overfit/overlap_") and v is not None
    }
    return {
        "overrides": overrides,
        "wall_s": round(wall, 1),
        "load": [round(load_start, 1), round(os.getloadavg()[0], 1)],
        "threads": threads,
        "epochs": len(val),
        "val": [round(v, 3) for v in val],
        "test": metrics.get("test/loss"),
        "overlaps": overlaps,
        "mean_overlap": sum(overlaps.values()) / len(overlaps) if overlaps else None,
        "memorization": metrics.get("overfit/memorization"),
        "data_memorization": metrics.get("data/memorization"),
        "n": n,
    }


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        "What `make train` (no arguments) costs and learns on a fresh clone, then `make evaluate N=16` on "
        "its best checkpoint: the 4-track piano-roll LSTM on the ~400 Bach chorales of the music21 corpus "
        "(20 epochs, W&B offline, `SampleMusic` every epoch). Mean overlap: the overlapping area of the "
        "samples' and the real test windows' per-piece distributions, averaged over the music metrics "
        "(1: the same distribution). Memorisation: the share of generated 4-bar windows found verbatim in "
        "the training set, beside the same share for real test music. Wall times depend on what else ran "
        "(the load average at the start and end is beside each); the losses and music figures do not.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['machine']}",
        f"- Updated: {meta['date']}",
        "",
        "| run | commit | threads | `make train` (load avg. start, end) | best val NLL | test NLL | mean overlap "
        "| memorisation (real test music) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = " ".join(r["overrides"]) or "default"
        lines.append(
            f"| `make train {name}`".replace("make train default", "make train")
            + f" | {r['commit']} | {r['threads']} "
            f"| {r['wall_s'] / 60:.1f} min | {min(r['val']):.2f} | **{r['test']:.2f}** | **{r['mean_overlap']:.2f}** "
            f"| {r['memorization']:.3f} ({r['data_memorization']:.3f}) |"
        )
    lines += ["", "Validation NLL per epoch (nats per frame, summed over 4 tracks × 49 pitches):", ""]
    for r in rows:
        lines.append(f"- {' '.join(r['overrides']) or 'default'}: {', '.join(f'{v:.2f}' for v in r['val'])}")
    lines += ["", "Overlap with real test music, per metric:", ""]
    names = sorted({k for r in rows for k in r["overlaps"]})
    lines += ["| metric | " + " | ".join(" ".join(r["overrides"]) or "default" for r in rows) + " |"]
    lines += ["|---" * (len(rows) + 1) + "|"]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(f"{r['overlaps'].get(name, float('nan')):.2f}" for r in rows) + " |"
        )
    lines += ["", f"{DATA_MARK}{json.dumps(rows, sort_keys=True)} -->", ""]
    return "\n".join(lines)


def write_docs(path: Path, rows: list[dict[str, Any]], argv: list[str]) -> None:
    """Write the section: these rows, and the rows of other variants it already held."""
    kept: list[dict[str, Any]] = []
    for line in (read_section(path, SECTION) or "").splitlines():
        if line.startswith(DATA_MARK):
            kept = json.loads(line[len(DATA_MARK) :].rsplit("-->", 1)[0])
    ran = {tuple(r["overrides"]) for r in rows}
    meta = {
        "command": "make bench-default " + " ".join(argv),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, no GPU; shared with other work",
        "date": time.strftime("%Y-%m-%d"),
    }
    replace_section(
        path, SECTION, render([*rows, *(r for r in kept if tuple(r["overrides"]) not in ran)], meta)
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_kv_args(argv, DEFAULTS)
    commit = require_committed(ROOT, args["allow_dirty"])
    rows: list[dict[str, Any]] = []
    for variant in args["variants"].split(";"):
        overrides = [] if variant.strip() in ("", "default") else variant.split()
        row = {**run_variant(overrides, args["n"]), "commit": commit}
        print(json.dumps(row))
        rows.append(row)
        if args["docs"]:  # after every run, so a later failure loses nothing
            write_docs(ROOT / args["docs"], rows, argv)
    return rows


if __name__ == "__main__":
    main()
