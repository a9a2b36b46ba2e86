"""The polyphonic-music benchmark (Boulanger-Lewandowski et al. 2012): ``make bench-poly``.

``python -m muselab.bench.poly [key=value ...]`` trains each model of ``models`` on each set of
``sets`` through the usual `muselab.train.train` (experiment configs ``conf/experiment/poly_*.yaml``:
`MusicDataModule` over `BoulangerSource`), keeps the checkpoint with the best validation NLL, scores
it on the test split with the field's exact metric (`poly_nll`), prints the result beside the
published figures and writes the ``## Polyphonic benchmark (make bench-poly)`` section of
``docs/benchmarks.md`` (other sections are kept). It also times sampling 16 bars on the Bach layout.

Arguments (``key=value``): ``data_dir`` (../shared/data/boulanger), ``sets`` (jsb; also
nottingham, musedata, piano), ``models`` (rnn_bernoulli,rnn_nade,wavenet_bernoulli,wavenet_nade;
also gru_bernoulli, gru_nade: any ``conf/experiment/poly_<model>.yaml``), ``max_minutes`` per run
(8), ``max_epochs`` (300), ``patience`` (15, early stopping on validation NLL), ``threads`` (torch
threads, 0: default), ``train`` (true), ``sampling`` (true), ``docs`` (docs/benchmarks.md; empty:
do not write), ``runs_dir`` (outputs/bench-poly), ``seed``. Any ``key=value`` whose key has a dot
is a Hydra override for every run (e.g. ``model.hidden_size=128``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from callbacks.poly_nll import poly_nll
from datamodules.sources import load_boulanger
from muselab.bench.markdown import cpu_model, git_commit, read_section, replace_section, require_committed

log = logging.getLogger("muselab.bench.poly")

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
SECTION = "## Polyphonic benchmark (make bench-poly)"
DATA_MARK = "<!-- bench-poly-data "

# Set name -> (file, column title in tables).
SETS: dict[str, tuple[str, str]] = {
    "jsb": ("JSB_Chorales.mat", "JSB"),
    "nottingham": ("Nottingham.mat", "Nottingham"),
    "musedata": ("MuseData.mat", "MuseData"),
    "piano": ("Piano_midi.mat", "Piano-midi"),
}
# Published test NLL (nats per frame), from ../shared/data/README.md.
PUBLISHED: dict[str, dict[str, float]] = {
    "RNN (TCN paper)": {"jsb": 8.91, "nottingham": 4.05},
    "LSTM (TCN paper)": {"jsb": 8.45, "nottingham": 3.29},
    "GRU (TCN paper)": {"jsb": 8.43, "nottingham": 3.46},
    "TCN (TCN paper)": {"jsb": 8.10, "nottingham": 3.07},
    "RNN-RBM (Boulanger-Lewandowski 2012)": {
        "jsb": 6.27,
        "nottingham": 2.39,
        "musedata": 6.01,
        "piano": 7.09,
    },
    "RNN-NADE (Boulanger-Lewandowski 2012)": {
        "jsb": 5.56,
        "nottingham": 2.31,
        "musedata": 5.60,
        "piano": 7.05,
    },
}
# This project's targets (test NLL) per head and set.
TARGETS: dict[str, dict[str, float]] = {
    "bernoulli": {"jsb": 8.0, "nottingham": 3.0},
    "nade": {"jsb": 5.5, "nottingham": 2.3, "musedata": 5.6, "piano": 7.0},
}
# Long pieces (Nottingham: up to 1,800 frames) train on windows; JSB (<= 160 frames) on whole pieces.
# Scoring always runs on whole sequences.
SET_OVERRIDES: dict[str, list[str]] = {
    "jsb": [],
    "nottingham": ["data.window=128", "data.stride=64", "data.batch_size=32"],
    "musedata": ["data.window=128", "data.stride=64", "data.batch_size=32"],
    "piano": ["data.window=128", "data.stride=64", "data.batch_size=32"],
}
# Callbacks a benchmark run keeps (selection, early stopping); the others are dropped.
BENCH_CALLBACKS = ("model_checkpoint", "poly_nll", "early_stopping")
DEFAULTS: dict[str, Any] = {
    "data_dir": "../shared/data/boulanger",
    "sets": "jsb",
    "models": "rnn_bernoulli,rnn_nade,wavenet_bernoulli,wavenet_nade",
    "max_minutes": 8.0,
    "max_epochs": 300,
    "patience": 15,
    "threads": 0,
    "train": True,
    "sampling": True,
    "docs": "docs/benchmarks.md",
    "runs_dir": "outputs/bench-poly",
    "seed": 1234,
    "allow_dirty": False,
}


def trend(history: list[dict[str, float]]) -> str:
    """Best validation NLL reached by 1, 2, 4, ... minutes of training (the budget's payoff)."""
    marks, out, minutes = [], [], 1.0
    end = history[-1]["seconds"] / 60 if history else 0.0
    while minutes < 0.95 * end:  # no mark just before the end: it would repeat the last figure
        marks.append(minutes)
        minutes *= 2
    marks.append(end)
    for mark in marks:
        seen = [h["nll"] for h in history if h["seconds"] / 60 <= mark + 1e-9]
        if seen:
            out.append(f"{mark:.3g}′ {min(seen):.2f}")
    return ", ".join(out)


# --------------------------------------------------------------------------------------------- runs
def compose(overrides: list[str], output_dir: Path) -> Any:
    """Compose ``conf/train.yaml`` as ``muselab.train`` would, with the Hydra runtime filled in."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig.instance().set_config(cfg)
    return cfg


def max_time(minutes: float) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS`` for a budget in minutes."""
    seconds = max(1, round(minutes * 60))
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_one(
    set_name: str, model_name: str, args: dict[str, Any], hydra_overrides: list[str]
) -> dict[str, Any]:
    """Train one model on one set, select by validation NLL, score val and test; return a result row."""
    from omegaconf import open_dict

    from lightning_modules.base import load_model
    from muselab.train import train

    path = (ROOT / Path(args["data_dir"]).expanduser()).resolve() / SETS[set_name][0]
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # two benches at once never share a run dir
    output_dir = (ROOT / args["runs_dir"] / f"{set_name}-{model_name}-{stamp}").resolve()
    overrides = [
        f"experiment=poly_{model_name}",
        f"data.source.path={path}",
        "callbacks.progress_bar=null",
        "n_samples=0",
        "test=false",
        f"seed={args['seed']}",
        f"trainer.max_epochs={args['max_epochs']}",
        f"+trainer.max_time='{max_time(args['max_minutes'])}'",
        f"callbacks.early_stopping.patience={args['patience']}",
        *SET_OVERRIDES[set_name],
        *hydra_overrides,
    ]
    log.info("bench-poly %s/%s: %s", set_name, model_name, " ".join(overrides))
    cfg = compose(overrides, output_dir)
    with open_dict(cfg):
        for name in list(cfg.callbacks):
            if name not in BENCH_CALLBACKS:  # per-epoch sampling/rendering would eat the time budget
                cfg.callbacks[name] = None
    start = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - start
    if not out["best_ckpt"]:
        raise RuntimeError(f"{set_name}/{model_name}: no checkpoint was saved")
    model = load_model(out["best_ckpt"])
    splits = load_boulanger(path)
    # lightning 2.6 refreshes last.ckpt only when the best one improves: count epochs from the history.
    history = json.loads((output_dir / "poly_nll.json").read_text())["history"]
    best = min(history, key=lambda h: h["nll"])
    row = {
        "set": set_name,
        "model": model_name,
        "head": model.hparams.get("head", "bernoulli"),
        "params": sum(p.numel() for p in model.parameters()),
        "val": poly_nll(model, splits["val"]),
        "test": poly_nll(model, splits["test"]),
        "epochs": history[-1]["epoch"],
        "best_epoch": best["epoch"],
        "trend": trend(history),
        "wall_s": round(wall, 1),
        "max_minutes": args["max_minutes"],
        "patience": args["patience"],
        "threads": torch.get_num_threads(),
        "load": round(os.getloadavg()[0], 1),  # the machine may be shared: wall times depend on it
        "overrides": hydra_overrides,
        "date": time.strftime("%Y-%m-%d"),
        "run_dir": str(output_dir.relative_to(ROOT)) if output_dir.is_relative_to(ROOT) else str(output_dir),
    }
    log.info("bench-poly %s/%s: val %.3f test %.3f", set_name, model_name, row["val"], row["test"])
    return row


def time_sampling(
    model_name: str, hydra_overrides: list[str], n: int = 1, repeats: int = 2
) -> dict[str, Any]:
    """Seconds to sample ``n`` x 16 bars (256 steps) on the Bach layout (4 tracks x 49 pitches).

    The model comes from the experiment's model config with untrained weights: the generation time
    does not depend on them. Decoding to `muspy.Music` (what ``sample()`` adds) is timed apart,
    since it grows with the number of notes, and an untrained Bernoulli head turns half the keys on.
    The best of ``repeats`` runs is kept.
    """
    import hydra.utils

    from datamodules.representations import build_representation

    output_dir = ROOT / "outputs" / "bench-poly"  # nothing is written: compose needs a run dir
    bach = compose(["data=bach"], output_dir)  # the default layout: 4 voices x 49 pitches, 4 steps/beat
    representation = build_representation(hydra.utils.instantiate(bach.representation, _convert_="all"))
    cfg = compose([f"experiment=poly_{model_name}", *hydra_overrides], output_dir)
    model = hydra.utils.instantiate(cfg.model, representation=representation, _convert_="all").eval()
    steps = representation.describe().default_length
    generate = decode = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        arrays = model.generate(n, steps)  # what sample() runs, before decoding
        generate = min(generate, time.perf_counter() - start)
        start = time.perf_counter()
        musics = [representation.decode(a.numpy()) for a in arrays]
        decode = min(decode, time.perf_counter() - start)
    if len(musics) != n or any(len(m.tracks) != representation.n_tracks for m in musics):
        raise RuntimeError(
            f"{model_name}: sampling did not give {n} pieces of {representation.n_tracks} tracks"
        )
    return {
        "model": model_name,
        "head": cfg.model.head,
        "n": n,
        "steps": steps,
        "layout": f"{representation.n_tracks}x{representation.n_pitches}",
        "seconds": round(generate, 3),
        "decode_seconds": round(decode, 3),
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------- report
def hardware() -> str:
    """CPU model, cores and torch build, for the record."""
    cpu = cpu_model(platform.processor() or platform.machine())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def comparison_table(results: list[dict[str, Any]]) -> str:
    """Markdown: our test NLL per model beside the published figures, one column per set."""
    sets = list(SETS)
    header = "| test NLL (nats/frame) | " + " | ".join(SETS[s][1] for s in sets) + " |"
    lines = [header, "|---" * (len(sets) + 1) + "|"]
    for model in dict.fromkeys(r["model"] for r in results):
        by_set = {r["set"]: r["test"] for r in results if r["model"] == model}
        lines.append(f"| **MuseLab {model}** | " + " | ".join(_fmt(by_set.get(s)) for s in sets) + " |")
    for name, figures in PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(figures.get(s)) for s in sets) + " |")
    return "\n".join(lines)


def render_section(
    results: list[dict[str, Any]], sampling: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    """The whole ``## Polyphonic benchmark`` section (its data kept in a comment, for later merges)."""
    runs = [
        "| set | model | head | params | budget | epochs run (best) | wall | val NLL | test NLL | target "
        "| best val NLL by minute | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        target = TARGETS.get(r["head"], {}).get(r["set"])
        met = "" if target is None else (f"≤ {target} ✓" if r["test"] <= target else f"≤ {target} ✗")
        budget = f"{r['max_minutes']:g} min, {r['threads']} thread" + "s" * (r["threads"] > 1)
        if "load" in r:
            budget += f", load {r['load']}"
        runs.append(
            f"| {SETS[r['set']][1]} | {r['model']} | {r['head']} | {r['params'] / 1e6:.2f} M | {budget} "
            f"| {r['epochs']} ({r['best_epoch']}) | {r['wall_s'] / 60:.1f} min | {r['val']:.3f} "
            f"| **{r['test']:.3f}** | {met} | {r.get('trend', '')} | {r.get('commit', 'not recorded')} |"
        )
    # One command per group of rows run with the same settings, rebuilt from the rows themselves.
    groups: dict[tuple, list[str]] = {}
    for r in results:
        key = (r["set"], r["max_minutes"], r["threads"], r.get("patience"), tuple(r.get("overrides", [])))
        groups.setdefault(key, []).append(r["model"])
    commands = [
        f"`make bench-poly sets={k[0]} models={','.join(v)} max_minutes={k[1]:g} threads={k[2]}"
        + (f" patience={k[3]}" if k[3] not in (None, DEFAULTS["patience"]) else "")
        + "".join(f" {o}" for o in k[4])
        + " sampling=false`"
        for k, v in groups.items()
    ]
    lines = [
        SECTION,
        "",
        "The Boulanger-Lewandowski et al. (2012) piano-roll benchmarks (`../shared/data/boulanger/*.mat`, "
        "88 keys, official splits). Metric, as in the TCN paper (Bai et al. 2018, Table 1): frame t+1 "
        "is predicted from frames ≤ t; Bernoulli NLL in nats summed over the 88 keys; the first frame "
        "of a sequence is never scored; total NLL over the split ÷ total predicted frames "
        "(`callbacks.poly_nll.poly_nll`, whole sequences). The checkpoint is the one with the best "
        "validation NLL (exact metric, every epoch); the test split is scored once, on it.",
        "",
        f"- Last command: `{meta['command']}`",
        *(f"- Reproduce rows: {c}" for c in commands),
        f"- Hardware: {meta['hardware']}",
        f"- Updated: {meta['date']}",
        "",
        "### Runs",
        "",
        *runs,
        "",
        "### Beside the published figures",
        "",
        comparison_table(results),
        "",
    ]
    if meta.get("notes"):
        lines += ["### Notes", "", meta["notes"].strip(), ""]
    if sampling:
        lines += [
            "### Sampling speed",
            "",
            "Generating 16 bars (256 steps at 4 steps per beat) on the Bach layout (4 tracks × 49 pitches) "
            "with the experiment's model size, n pieces at once (vectorised over the batch), untrained "
            "weights (generation cost does not depend on them); best of 2. Decoding to `muspy.Music` "
            "is listed apart: it grows with the number of notes, and an untrained Bernoulli head turns "
            "half the keys on.",
            "",
            "| model | head | n | generate (s) | per piece (s) | decode (s) | threads |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['model']} | {s['head']} | {s['n']} | {s['seconds']:.2f} | {s['seconds'] / s['n']:.3f} "
            f"| {s.get('decode_seconds', float('nan')):.2f} | {s['threads']} |"
            for s in sampling
        ]
        lines.append("")
    data = {"results": results, "sampling": sampling, "meta": meta}
    lines += [f"{DATA_MARK}{json.dumps(data, sort_keys=True)} -->", ""]
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


def merge(
    old: list[dict[str, Any]], new: list[dict[str, Any]], keys: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Rows of ``old`` and ``new``; a new row replaces an old one with the same ``keys``."""
    merged = {tuple(r[k] for k in keys): r for r in old}
    merged.update({tuple(r[k] for k in keys): r for r in new})
    order = {name: i for i, name in enumerate(SETS)}
    return sorted(merged.values(), key=lambda r: (order.get(r.get("set", ""), 0), str(r["model"])))


def write_section(
    path: Path, results: list[dict[str, Any]], sampling: list[dict[str, Any]], meta: dict[str, Any]
) -> None:
    """Write or replace the section in ``path`` (merging with its stored runs), keeping the rest."""
    old = stored_data(read_section(path, SECTION))
    results = merge(old.get("results", []), results, ("set", "model"))
    sampling = merge(old.get("sampling", []), sampling, ("model", "n"))
    meta = {**old.get("meta", {}), **{k: v for k, v in meta.items() if v}}
    replace_section(path, SECTION, render_section(results, sampling, meta))


def print_report(results: list[dict[str, Any]], sampling: list[dict[str, Any]]) -> None:
    print("\n" + comparison_table(results))
    for r in results:
        print(
            f"{r['set']:<11}{r['model']:<18} val {r['val']:.3f}  test {r['test']:.3f}  "
            f"epochs {r['epochs']} (best {r['best_epoch']})  {r['wall_s'] / 60:.1f} min"
        )
    for s in sampling:
        print(f"sampling {s['model']:<18} n={s['n']:<3} {s['steps']} steps: {s['seconds']:.2f} s")


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``key=value`` arguments of this script, and Hydra overrides (keys with a dot, or ``+``/``~``)."""
    ours, hydra_overrides = [], []
    for arg in argv:
        key = arg.partition("=")[0]
        (hydra_overrides if "." in key or key[:1] in "+~" else ours).append(arg)
    return ours, hydra_overrides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the new result rows and sampling times."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from muselab.cli import parse_kv_args

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    ours, hydra_overrides = split_args(argv)
    args = parse_kv_args(ours, DEFAULTS)
    if args["threads"] > 0:
        torch.set_num_threads(args["threads"])
    os.environ.setdefault("WANDB_MODE", "offline")
    sets = [s.strip().lower() for s in args["sets"].split(",") if s.strip()]
    models = [m.strip() for m in args["models"].split(",") if m.strip()]
    unknown = [s for s in sets if s not in SETS] + [
        m for m in models if not (CONF_DIR / "experiment" / f"poly_{m}.yaml").is_file()
    ]
    if unknown:
        raise SystemExit(
            f"unknown sets/models {unknown}; sets: {sorted(SETS)}; models: conf/experiment/poly_*.yaml"
        )
    commit = require_committed(ROOT, args["allow_dirty"]) if args["docs"] else git_commit(ROOT)
    results: list[dict[str, Any]] = []
    sampling: list[dict[str, Any]] = []
    if GlobalHydra.instance().is_initialized():  # e.g. a config composed earlier in this process
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        if args["train"]:
            for set_name in sets:
                for model_name in models:
                    results.append({**run_one(set_name, model_name, args, hydra_overrides), "commit": commit})
                    print_report(results[-1:], [])
        if args["sampling"]:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one piece at a time is latency-bound: extra threads only add overhead
            for model_name in models:
                for n in (1, 8):
                    L.seed_everything(args["seed"], verbose=False)
                    sampling.append(time_sampling(model_name, hydra_overrides, n))
            torch.set_num_threads(threads)
    print_report(results, sampling)
    if args["docs"]:
        command = "make bench-poly " + " ".join(argv) if argv else "make bench-poly"
        meta = {
            "command": command.strip(),
            "hardware": hardware() + f", {torch.get_num_threads()} torch threads",
            "date": time.strftime("%Y-%m-%d"),
        }
        write_section(ROOT / args["docs"], results, sampling, meta)
        log.info("Wrote %s", ROOT / args["docs"])
    return {"results": results, "sampling": sampling}


if __name__ == "__main__":
    main()
