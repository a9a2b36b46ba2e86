"""The Melody RNN benchmark: ``make bench-melody``.

``python -m muselab.bench.melody [key=value ...]`` trains Magenta's three Melody RNN configurations
(``conf/model/melody_rnn_{basic,lookback,attention}.yaml``) for the same wall-clock budget on the
same offline data (the Essen folk songs of music21, hash split) through the usual
`muselab.train.train`, keeps each one's checkpoint with the best validation loss and reports, on
the test split:

- event NLL (nats per 16th-note step) and accuracy: a repeat label counts as the event it stands
  for, so the three are comparable; the label loss each model trains on is given beside it;
- the train/val gap over epochs (these models overfit easily);
- ``n_samples`` unprimed samples of ``bars`` bars: their ``sample/`` metrics beside the ``data/``
  figures of real test windows of as many bars, the overlap of the two distributions and the
  memorisation of the training set (`muselab.music.evaluation`);
- long-term structure: the share of bars that repeat an earlier bar of the same piece
  (`repeated_bar_share`), in the samples and in the real windows.

It writes the ``## Melody RNN benchmark (make bench-melody)`` section of ``docs/benchmarks.md``
(other sections are kept; rows of models not run this time are kept from the last run).

Arguments (``key=value``): ``models`` (basic,lookback,attention: any ``conf/model/melody_rnn_<name>.yaml``),
``max_minutes`` of training per model (15), ``max_epochs`` (100), ``threads`` (torch threads; 0:
the idle cores), ``n_samples`` (64), ``bars`` (16), ``temperature`` (1.0), ``n_real`` (128 real
windows), ``docs`` (docs/benchmarks.md; empty: do not write), ``runs_dir`` (outputs/bench-melody),
``seed`` (1234). Any ``key=value`` whose key has a dot is a Hydra override for every run (e.g.
``data.source.limit=2000`` or ``model.encoder=key``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import muspy
import numpy as np
import torch

from muselab.bench.markdown import read_section, replace_section
from muselab.bench.poly import compose, hardware, max_time, split_args
from muselab.music.memorization import EVAL_STEPS_PER_BEAT, evaluation_roll
from muselab.music.metrics import METRIC_NAMES

log = logging.getLogger("muselab.bench.melody")

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
SECTION = "## Melody RNN benchmark (make bench-melody)"
DATA_MARK = "<!-- bench-melody-data "
DEFAULTS: dict[str, Any] = {
    "models": "basic,lookback,attention",
    "max_minutes": 15.0,
    "max_epochs": 100,
    "threads": 0,
    "n_samples": 64,
    "bars": 16,
    "temperature": 1.0,
    "n_real": 128,
    "docs": "docs/benchmarks.md",
    "runs_dir": "outputs/bench-melody",
    "seed": 1234,
}
# The callbacks a benchmark run keeps: per-epoch sampling would eat the budget (samples are made once,
# from the best checkpoint, below).
BENCH_CALLBACKS = ("model_checkpoint",)


# --------------------------------------------------------------------------------------------- structure
def repeated_bar_share(music: muspy.Music, beats_per_bar: int = 4) -> tuple[int, int]:
    """``(repeated, bars)``: of the bars of ``music`` in which something sounds, how many repeat an
    earlier bar of the same piece exactly, and how many there are.

    Bars are compared on the evaluation grid (`evaluation_roll`: which pitches sound and which start
    at each of 12 steps per beat, all pitched tracks merged), so a held note and a repeated one
    differ, and a bar transposed or shifted by a 16th is not a repeat. Silent bars count on neither
    side. Bars run from time zero, ``beats_per_bar`` beats each, as the bar metrics assume.
    """
    roll = evaluation_roll(music)
    bar = EVAL_STEPS_PER_BEAT * beats_per_bar
    if not len(roll):
        return 0, 0
    roll = np.pad(roll, ((0, -len(roll) % bar), (0, 0)))
    bars = roll.reshape(-1, bar * roll.shape[1])
    seen: set[bytes] = set()
    repeated = counted = 0
    for content in bars[bars.any(axis=1)]:
        key = np.packbits(content).tobytes()
        repeated += key in seen
        counted += 1
        seen.add(key)
    return repeated, counted


def structure(musics: list[muspy.Music]) -> dict[str, float]:
    """The share of sounding bars that repeat an earlier bar (pooled over the pieces), and how many
    distinct bars a piece has on average."""
    counts = [repeated_bar_share(m) for m in musics]
    repeated, bars = sum(r for r, _ in counts), sum(b for _, b in counts)
    return {
        "repeated_bar_share": repeated / bars if bars else float("nan"),
        "distinct_bars": float(np.mean([b - r for r, b in counts])) if counts else float("nan"),
        "pieces": len(musics),
    }


# --------------------------------------------------------------------------------------------- runs
def read_log(metrics_csv: Path) -> tuple[list[dict[str, float]], int]:
    """Lightning's CSV log: per epoch the mean training loss, the validation loss and event NLL; and
    the optimiser steps taken."""
    epochs: dict[int, dict[str, float]] = {}
    steps = 0
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get("step"):
                steps = max(steps, int(row["step"]) + 1)
            if not row.get("epoch"):
                continue
            entry = epochs.setdefault(int(row["epoch"]), {"epoch": int(row["epoch"])})
            for column, name in (
                ("train/loss_epoch", "train"),
                ("val/loss", "val"),
                ("val/event_nll", "val_event_nll"),
            ):
                if row.get(column):
                    entry[name] = float(row[column])
    return [e for _, e in sorted(epochs.items()) if "train" in e and "val" in e], steps


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files have changed since."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode != 0
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(name: str, args: dict[str, Any], hydra_overrides: list[str]) -> tuple[dict[str, Any], Any]:
    """Train one configuration, reload its best checkpoint and measure it; returns the result row
    and the datamodule (for the real-music side, which every model shares)."""
    from omegaconf import open_dict

    from lightning_modules.base import load_model
    from muselab.music.evaluation import MusicReference, music_report
    from muselab.train import train
    from muselab.utils import instantiate_checked

    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    output_dir = (ROOT / args["runs_dir"] / f"{name}-{stamp}").resolve()
    overrides = [
        f"model=melody_rnn_{name}",
        "logger=csv",
        "n_samples=0",
        "test=false",
        f"seed={args['seed']}",
        f"torch_threads={args['threads']}",
        f"trainer.max_epochs={args['max_epochs']}",
        f"trainer.max_time='{max_time(args['max_minutes'])}'",
        *hydra_overrides,
    ]
    log.info("bench-melody %s: %s", name, " ".join(overrides))
    cfg = compose(overrides, output_dir)
    with open_dict(cfg):
        for callback in list(cfg.callbacks):
            if callback not in BENCH_CALLBACKS:
                cfg.callbacks[callback] = None
    start = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - start
    if not out["best_ckpt"]:
        raise RuntimeError(f"melody_rnn_{name}: no checkpoint was saved")
    history, steps = read_log(output_dir / "csv" / "version_0" / "metrics.csv")
    model = load_model(out["best_ckpt"])
    datamodule = instantiate_checked(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()

    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(output_dir),
    )  # fmt: skip
    [test] = trainer.test(model, datamodule=datamodule, verbose=False)
    L.seed_everything(args["seed"], verbose=False)
    start = time.perf_counter()
    samples = model.sample(args["n_samples"], args["bars"] * model.steps_per_bar, args["temperature"])
    sample_seconds = time.perf_counter() - start
    splits = datamodule.split_arrays
    reference = MusicReference(
        splits["test"], splits["train"], model.representation, args["bars"], args["n_real"]
    )
    report = music_report(samples, reference)
    best = min(history, key=lambda h: h["val"]) if history else {}
    row = {
        "model": name,
        "encoder": model.hparams["encoder"],
        "attention_length": model.hparams["attention_length"],
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "steps": steps,
        "history": history,
        "test": {k: float(v) for k, v in test.items()},
        "samples": report,
        "structure": structure(samples),
        "sample_seconds": round(sample_seconds, 1),
        "wall_s": round(wall, 1),
        "max_minutes": args["max_minutes"],
        "max_epochs": args["max_epochs"],
        "threads": torch.get_num_threads(),
        "load": round(os.getloadavg()[0], 1),
        "overrides": hydra_overrides,
        "run_dir": str(output_dir.relative_to(ROOT)) if output_dir.is_relative_to(ROOT) else str(output_dir),
    }
    log.info(
        "bench-melody %s: test event NLL %.3f, accuracy %.3f, repeated bars %.3f",
        name,
        row["test"]["test/event_nll"],
        row["test"]["test/event_accuracy"],
        row["structure"]["repeated_bar_share"],
    )
    return row, (datamodule, reference)


def data_figures(datamodule: Any, reference: Any) -> dict[str, Any]:
    """The real side: ``data/`` metrics and structure of the test windows, memorisation baseline, split sizes."""
    figures = reference.data_metrics()
    if reference.windows and reference.memorization is not None:
        figures["data/memorization"] = reference.memorization.score(reference.windows)
    return {
        "metrics": figures,
        "structure": structure(reference.windows),
        "pieces": {split: len(arrays) for split, arrays in datamodule.split_arrays.items()},
        "windows": len(reference.windows),
    }


# --------------------------------------------------------------------------------------------- report
def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render_section(rows: list[dict[str, Any]], data: dict[str, Any], meta: dict[str, Any]) -> str:
    """The whole ``## Melody RNN benchmark`` section (its data kept in a comment, for later merges)."""
    names = [r["model"] for r in rows]
    lines = [
        SECTION,
        "",
        "Magenta's Melody RNN configurations (`lightning_modules/melody_rnn.py`) trained for the same "
        "wall-clock budget on the same data: the Essen folk songs of music21 (melodies moved to C, MIDI "
        "48..83, whole melodies cut at 512 steps, hash split). Each model's checkpoint with the best "
        "validation loss is scored on the test split. *Event* NLL and accuracy count a repeat label as "
        "the event it stands for, so the three are comparable (nats per 16th-note step); *label* NLL is "
        "what lookback and attention train on (40 classes). Samples are unprimed, "
        f"{meta.get('bars', 16)} bars at temperature {meta.get('temperature', 1.0)}, compared with "
        f"{data.get('windows', '?')} real test windows of as many bars.",
        "",
        f"- Command: `{meta.get('command', 'make bench-melody')}` (commit `{meta.get('commit', '?')}`)",
        f"- Hardware: {meta.get('hardware', '?')}",
        f"- Data: {data.get('pieces', {})} pieces (train/val/test)",
        f"- Updated: {meta.get('date', '?')}",
        "",
        "### Test split",
        "",
        "| model | params | budget | epochs (best) | steps | event NLL | event acc. | label NLL | label acc. "
        "| val − train at best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = next((h for h in r["history"] if h["epoch"] == r["best_epoch"]), None)
        gap = best["val"] - best["train"] if best else None
        budget = f"{r['max_minutes']:g} min or {r.get('max_epochs', '?')} epochs, {r['threads']} thread"
        budget += "s" * (r["threads"] > 1)
        budget += f", load {r['load']}"
        t = r["test"]
        lines.append(
            f"| {r['model']} | {r['params'] / 1e3:.0f} k | {budget} | {r['epochs']} ({r['best_epoch']}) "
            f"| {r['steps']} | **{_f(t.get('test/event_nll'))}** | **{_f(t.get('test/event_accuracy'))}** "
            f"| {_f(t.get('test/loss'))} | {_f(t.get('test/accuracy'))} | {_f(gap)} |"
        )
    lines += [
        "",
        "### Train/val gap over epochs",
        "",
        "Validation loss minus the epoch's mean training loss (dropout is on in training and off in "
        "validation, so a negative gap is normal early on), with the validation loss in brackets.",
        "",
        "| epoch | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    longest = max((len(r["history"]) for r in rows), default=0)
    for epoch in range(longest):
        cells = []
        for r in rows:
            h = r["history"][epoch] if epoch < len(r["history"]) else None
            cells.append(f"{h['val'] - h['train']:+.3f} ({h['val']:.3f})" if h else "")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    real = data.get("structure", {})
    lines += [
        "",
        "### Long-term structure",
        "",
        "Share of the sounding bars that repeat an earlier bar of the same piece exactly "
        "(`muselab.bench.melody.repeated_bar_share`: pitches sounding and starting on a 48-step bar "
        "grid), pooled over the pieces, and distinct bars per piece.",
        "",
        "| | " + " | ".join(names) + " | real test windows |",
        "|---" * (len(names) + 2) + "|",
        "| repeated-bar share | "
        + " | ".join(f"**{_f(r['structure']['repeated_bar_share'])}**" for r in rows)
        + f" | **{_f(real.get('repeated_bar_share'))}** |",
        "| distinct bars per piece | "
        + " | ".join(_f(r["structure"]["distinct_bars"], 1) for r in rows)
        + f" | {_f(real.get('distinct_bars'), 1)} |",
        "",
        "### Samples against the data",
        "",
        "Means over the samples (`sample/`) and the real test windows (`data/`); in brackets the "
        "overlapping area of the two per-piece distributions (1: the same). Memorisation: share of "
        "4-bar windows found verbatim in the training set (for real test music: the baseline).",
        "",
        "| metric | " + " | ".join(names) + " | data |",
        "|---" * (len(names) + 2) + "|",
    ]
    real_metrics = data.get("metrics", {})
    for metric in (*METRIC_NAMES, "n_notes"):
        if f"data/{metric}" not in real_metrics and not any(f"sample/{metric}" in r["samples"] for r in rows):
            continue
        cells = []
        for r in rows:
            value, overlap = (
                r["samples"].get(f"sample/{metric}"),
                r["samples"].get(f"overfit/overlap_{metric}"),
            )
            cells.append(_f(value) + (f" ({overlap:.2f})" if overlap is not None else ""))
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {_f(real_metrics.get(f'data/{metric}'))} |")
    lines.append(
        "| memorisation | "
        + " | ".join(_f(r["samples"].get("overfit/memorization")) for r in rows)
        + f" | {_f(real_metrics.get('data/memorization'))} |"
    )
    lines.append("")
    if meta.get("notes"):
        lines += ["### Reading", "", meta["notes"].strip(), ""]
    stored = {"rows": rows, "data": data, "meta": meta}
    lines += [f"{DATA_MARK}{json.dumps(stored, sort_keys=True)} -->", ""]
    return "\n".join(lines)


def stored_data(section: str | None) -> dict[str, Any]:
    """The results an earlier run embedded in the section (empty if none)."""
    for line in (section or "").splitlines():
        if line.startswith(DATA_MARK):
            try:
                return json.loads(line[len(DATA_MARK) :].rsplit("-->", 1)[0])
            except json.JSONDecodeError:
                return {}
    return {}


def write_section(path: Path, rows: list[dict[str, Any]], data: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write or replace the section in ``path``; rows of models not run now are kept from the last run."""
    old = stored_data(read_section(path, SECTION))
    merged = {r["model"]: r for r in old.get("rows", [])}
    merged.update({r["model"]: r for r in rows})
    order = ["basic", "lookback", "attention"]
    rows = sorted(
        merged.values(), key=lambda r: (order.index(r["model"]) if r["model"] in order else 99, r["model"])
    )
    meta = {**old.get("meta", {}), **{k: v for k, v in meta.items() if v}}
    replace_section(path, SECTION, render_section(rows, data or old.get("data", {}), meta))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the new rows and the real-data figures."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from muselab.cli import parse_kv_args

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    ours, hydra_overrides = split_args(argv)
    args = parse_kv_args(ours, DEFAULTS)
    os.environ.setdefault("WANDB_MODE", "offline")
    models = [m.strip() for m in str(args["models"]).split(",") if m.strip()]
    unknown = [m for m in models if not (CONF_DIR / "model" / f"melody_rnn_{m}.yaml").is_file()]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: conf/model/melody_rnn_*.yaml")
    commit = git_commit()
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in models:
            row, (datamodule, reference) = run_one(name, args, hydra_overrides)
            rows.append(row)
            if not data:
                data = data_figures(datamodule, reference)
    for r in rows:
        print(
            f"{r['model']:<10} event NLL {r['test']['test/event_nll']:.3f}  acc {r['test']['test/event_accuracy']:.3f}"
            f"  repeated bars {r['structure']['repeated_bar_share']:.3f}  epochs {r['epochs']}"
        )
    print(f"data       repeated bars {data['structure']['repeated_bar_share']:.3f}")
    if args["docs"]:
        meta = {
            "command": ("make bench-melody " + " ".join(argv)).strip(),
            "commit": commit,
            "hardware": hardware(),
            "date": time.strftime("%Y-%m-%d"),
            "bars": args["bars"],
            "temperature": args["temperature"],
        }
        write_section(ROOT / args["docs"], rows, data, meta)
        log.info("Wrote %s", ROOT / args["docs"])
    return {"rows": rows, "data": data}


if __name__ == "__main__":
    main()
