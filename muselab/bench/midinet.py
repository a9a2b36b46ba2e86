"""The MidiNet benchmark: ``make bench-midinet`` (``python -m muselab.bench.midinet key=value ...``).

Trains each run of ``runs`` (``midinet-bach``, ``midinet-nottingham``, ``multitrack-bach``,
``multitrack-nottingham``) for a time budget through the usual `muselab.train.train`, then measures
``n`` samples of ``bars`` bars from the model the budget ends with (``checkpoints/latest.ckpt``) beside as many real windows of the test
split, with the MuseGAN metrics (`muselab.music.metrics`) and MidiNet's own figures, and writes the
``## MidiNet (make bench-midinet)`` section of ``docs/benchmarks.md`` (runs made at other times are
kept: their data lives in a comment in the section).

Both sides are measured as the model gives its music: a melody model's real windows are the
melody (the same track or skyline the model learnt) with the bar chords it was conditioned on
played as block chords, exactly as its samples carry the progression they were conditioned on.

Arguments (``key=value``): ``runs`` (all four), ``minutes`` per run (15), ``nottingham_root`` (a
writable copy of the Nottingham ABC folder; needed by the nottingham runs), ``threads`` (torch
threads, 1), ``n`` (64 samples and real windows), ``bars`` (8), ``train`` (true; false: measure
``runs_dir``'s latest run of each), ``docs`` (docs/benchmarks.md; empty: do not write),
``runs_dir`` (outputs/bench-midinet), ``seed``. A ``key=value`` whose key has a dot is a Hydra
override for every run (``model.lambda1=0.01``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import muspy
import numpy as np
import torch

from datamodules.pieces import piece_steps, piece_window
from muselab.bench.markdown import read_section, replace_section
from muselab.bench.poly import ROOT, compose, hardware, max_time, split_args
from muselab.music.metrics import QUALIFIED_NOTE_STEPS, music_metrics

log = logging.getLogger("muselab.bench.midinet")

SECTION = "## MidiNet (make bench-midinet)"
DATA_MARK = "<!-- bench-midinet-data "
RUNS: dict[str, list[str]] = {
    "midinet-bach": ["model=midinet", "data=bach"],
    "midinet-nottingham": ["model=midinet", "data=nottingham"],
    "multitrack-bach": ["model=midinet_multitrack", "data=bach"],
    "multitrack-nottingham": ["model=midinet_multitrack", "data=nottingham"],
}
DEFAULTS: dict[str, Any] = {
    "runs": ",".join(RUNS),
    "minutes": 15.0,
    "nottingham_root": None,
    "threads": 1,
    "n": 64,
    "bars": 8,
    "train": True,
    "docs": "docs/benchmarks.md",
    "runs_dir": "outputs/bench-midinet",
    "seed": 1234,
}
# Callbacks a benchmark run keeps: checkpoints, and the per-epoch samples and GAN-health figures
# without audio (rendering would eat the budget).
CALLBACK_OVERRIDES = ["callbacks.progress_bar=null", "callbacks.sample_music.n_audio=0"]
# The model measured is the one the budget ends with: Lightning 2.6 refreshes last.ckpt only when
# the monitored best improves, and a GAN's val/loss is no measure of its music.
LATEST_CHECKPOINT = {
    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
    "dirpath": "${paths.output_dir}/checkpoints",
    "filename": "latest",
    "monitor": None,
    "save_top_k": 1,
    "enable_version_counter": False,
}
# (key, label) of the figures reported, in order.
FIGURES: list[tuple[str, str]] = [
    ("empty_bar_rate", "empty bars (EB), generated tracks"),
    ("pitch_classes_per_bar", "used pitch classes per bar (UPC)"),
    ("qualified_note_rate", f"qualified notes (QN): ≥ {QUALIFIED_NOTE_STEPS} steps at 24/beat (paper)"),
    ("long_note_rate", "notes of ≥ 2 grid steps (an 8th or longer)"),
    ("notes_per_bar", "notes per bar and generated track"),
    ("tonal_distance", "tonal distance between tracks (TD; middle 80 % of pieces)"),
    ("chord_tone_ratio", "chord-tone ratio (melody notes on the bar's triad)"),
    ("chord_tone_ratio_other", "chord-tone ratio against another piece's chords (chance)"),
    ("diversity", "diversity: mean pairwise distance of bars (cells)"),
]


# --------------------------------------------------------------------------------------------- measuring
def real_windows(arrays: Any, steps: int, n: int) -> list[np.ndarray]:
    """Up to ``n`` windows of ``steps`` steps, bar-aligned from each piece's start, spread over pieces."""
    spans = [(i, s) for i in range(len(arrays)) for s in range(0, piece_steps(arrays, i) - steps + 1, steps)]
    if len(spans) > n:
        spans = [spans[int(k)] for k in np.linspace(0, len(spans) - 1, n).round()]
    return [np.asarray(piece_window(arrays, i, s, steps), dtype=bool) for i, s in spans]


def melody_roll(model: Any, music: muspy.Music) -> np.ndarray:
    """The first generated track of a finished piece as a ``(steps, pitches)`` roll."""
    rep = model.representation
    roll = np.zeros((music.get_end_time(), rep.n_pitches), dtype=bool)
    for note in music.tracks[0].notes:
        roll[note.time : note.time + note.duration, note.pitch - rep.pitch_low] = True
    return roll


def piece_figures(
    model: Any, music: muspy.Music, chords: torch.Tensor, other: torch.Tensor
) -> dict[str, float]:
    """The figures of one finished piece: MuseGAN metrics, note lengths, chord-tone ratios."""
    from lightning_modules.midinet import chord_tone_ratio

    rep = model.representation
    generated = muspy.Music(resolution=music.resolution, tempos=music.tempos, barlines=music.barlines)
    generated.tracks = music.tracks[: len(model.channels)]
    out = {k: v for k, v in music_metrics(generated).items() if k != "tonal_distance"}
    if "tonal_distance" in (whole := music_metrics(music)):
        out["tonal_distance"] = whole["tonal_distance"]
    durations = [n.duration for t in generated.tracks for n in t.notes]
    if durations:
        out["long_note_rate"] = float(np.mean(np.asarray(durations) >= 2))
    n_bars = max(1, round(music.get_end_time() / model.steps_per_bar))
    out["notes_per_bar"] = len(durations) / (n_bars * len(generated.tracks))
    roll = melody_roll(model, music)
    for key, progression in (("chord_tone_ratio", chords), ("chord_tone_ratio_other", other)):
        ratio = chord_tone_ratio(roll, progression.cpu().numpy(), rep.pitch_low, model.steps_per_bar)
        if ratio is not None:
            out[key] = ratio
    return out


def mean_figures(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over the pieces that have it, and ``<figure>_p10`` / ``_p90``: the
    range of the middle 80 % of the pieces (what "within the data's range" is judged against)."""
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r[key] for r in rows if key in r]
        out[key] = float(np.mean(values))
        out[f"{key}_p10"], out[f"{key}_p90"] = (float(v) for v in np.percentile(values, [10, 90]))
    return out


@torch.no_grad()
def measure(model: Any, datamodule: Any, n: int, bars: int, seed: int) -> dict[str, Any]:
    """Samples of the model beside real test windows: the mean of every figure on each side."""
    rep, w = model.representation, model.steps_per_bar
    steps = bars * w
    windows = real_windows(datamodule.split_arrays["test"], steps, n)
    if not windows:
        raise RuntimeError(f"no test piece is {bars} bars long")
    real_rolls = torch.from_numpy(np.stack(windows)).float()  # (n, steps, tracks, pitches)
    real_bars = real_rolls.reshape(len(windows), bars, w, rep.n_tracks, rep.n_pitches)
    real_chords = model.chords_of(real_bars)  # (n, bars, 13): what a melody model is conditioned on
    plays = model.condition_dim and model.chord_track not in model.channels
    real_musics = []
    for roll, chords in zip(real_rolls, real_chords):
        kept = torch.zeros_like(roll)
        kept[:, model.channels] = model.generated_tracks(roll)
        real_musics.append(model.finish(rep.decode(kept.numpy()), chords if plays else None))

    L.seed_everything(seed, verbose=False)
    samples = model.sample(len(windows), steps)
    if model.last_progression is not None:
        sample_chords = model.last_progression[0]
    else:  # no chord condition: the chords of the generated bars themselves, as for real bars
        sample_rolls = torch.from_numpy(np.stack([rep.encode(m) for m in samples]))
        sample_chords = model.chords_of(_bars(sample_rolls, steps, model))
    other = lambda chords: chords.roll(1, dims=0)  # noqa: E731  (another piece's progression)
    sides = {}
    for side, musics, chords in (("samples", samples, sample_chords), ("data", real_musics, real_chords)):
        rows = [piece_figures(model, m, c, o) for m, c, o in zip(musics, chords, other(chords))]
        sides[side] = mean_figures(rows)
    # Diversity: bars generated for the test windows' second bars (the previous bar and chord of
    # real music, fixed noise) beside those real bars.
    batch = {"x": real_rolls[:, : 2 * w], "mask": torch.ones(len(windows), 2 * w, dtype=torch.bool)}
    fake, real = model.diversity(*model.pairs(batch))
    sides["samples"]["diversity"], sides["data"]["diversity"] = fake, real
    return {"n": len(windows), "bars": bars, **sides}


def _bars(rolls: torch.Tensor, steps: int, model: Any) -> torch.Tensor:
    rolls = rolls.float()[:, :steps]
    if rolls.shape[1] < steps:
        rolls = torch.cat(
            [rolls, rolls.new_zeros(len(rolls), steps - rolls.shape[1], *rolls.shape[2:])], dim=1
        )
    return rolls.reshape(len(rolls), steps // model.steps_per_bar, model.steps_per_bar, *rolls.shape[2:])


# --------------------------------------------------------------------------------------------- runs
def run_one(name: str, args: dict[str, Any], hydra_overrides: list[str]) -> dict[str, Any]:
    """Train one run for the budget (or take ``runs_dir``'s latest), measure it, return its row."""
    import hydra.utils
    from omegaconf import open_dict

    from lightning_modules.base import load_model
    from muselab.train import train

    overrides = list(RUNS[name])
    if "nottingham" in name:
        if not args["nottingham_root"]:
            raise SystemExit(f"{name}: give nottingham_root=/a/writable/copy/of/nottingham_abc")
        overrides.append(f"data.source.root={Path(args['nottingham_root']).expanduser().resolve()}")
    overrides += [
        f"seed={args['seed']}",
        "trainer.max_epochs=1000",
        f"+trainer.max_time='{max_time(args['minutes'])}'",
        "n_samples=0",
        "test=false",
        "logger=csv",
        f"torch_threads={args['threads']}",
        *CALLBACK_OVERRIDES,
        *hydra_overrides,
    ]
    runs = ROOT / args["runs_dir"]
    if args["train"]:
        output_dir = (runs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        log.info("bench-midinet %s: %s", name, " ".join(overrides))
        cfg = compose(overrides, output_dir)
        with open_dict(cfg):
            cfg.callbacks.latest_checkpoint = LATEST_CHECKPOINT
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
    else:
        output_dir = max(runs.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
        cfg, wall = compose(overrides, output_dir), None
    ckpt = output_dir / "checkpoints" / "latest.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = load_model(ckpt)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    torch.set_num_threads(args["threads"])
    figures = measure(model, datamodule, args["n"], args["bars"], args["seed"])
    return {
        "run": name,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": int(checkpoint["epoch"]) + 1,
        "batches": int(checkpoint["global_step"]),
        "minutes": args["minutes"],
        "wall_s": None if wall is None else round(wall, 1),
        "threads": args["threads"],
        "load": round(os.getloadavg()[0], 1),
        "overrides": hydra_overrides,
        "date": time.strftime("%Y-%m-%d"),
        "run_dir": str(output_dir.relative_to(ROOT)) if output_dir.is_relative_to(ROOT) else str(output_dir),
        **figures,
    }


# --------------------------------------------------------------------------------------------- report
def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key.endswith(("rate", "ratio", "_other")):
        return f"{100 * value:.1f} %"
    return f"{value:.2f}"


def _cell(key: str, figures: dict[str, float]) -> str:
    """The mean, and for the tonal distance the middle 80 % of the pieces."""
    text = _fmt(key, figures.get(key))
    if key == "tonal_distance" and f"{key}_p10" in figures:
        text += f" ({figures[f'{key}_p10']:.2f}–{figures[f'{key}_p90']:.2f})"
    return text


def run_table(row: dict[str, Any]) -> str:
    lines = ["| figure | samples | data (test windows) |", "|---|---:|---:|"]
    for key, label in FIGURES:
        sample, data = row["samples"].get(key), row["data"].get(key)
        if sample is None and data is None:
            continue
        lines.append(f"| {label} | {_cell(key, row['samples'])} | {_cell(key, row['data'])} |")
    return "\n".join(lines)


def render_section(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        "MidiNet (`model=midinet`: a melody over chords) and its multi-track variant "
        "(`model=midinet_multitrack`: every track, MuseGAN-style shared + private latents, no chords) "
        "trained for a fixed wall-clock budget each, then measured on samples from the model the budget "
        "ends with (its last finished epoch) beside real windows of the test split of the same length "
        "(bar-aligned from each piece's start). "
        "Figures are means over pieces, on decoded music (`muselab.music.metrics`: MuseGAN's metrics with "
        "a correct chroma). A melody model's pieces carry the chords they were conditioned on as a "
        "`chords` track (samples: a progression drawn from the training data's chord transitions; data: "
        "the chord symbols on Nottingham, the estimated bar chords on Bach); TD is then melody vs chords.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Hardware: {meta['hardware']}",
        f"- Updated: {meta['date']}",
        "",
    ]
    for row in rows:
        budget = f"{row['minutes']:g} min, {row['threads']} thread" + "s" * (row["threads"] > 1)
        wall = "" if row.get("wall_s") is None else f", {row['wall_s'] / 60:.1f} min wall"
        lines += [
            f"### {row['run']} ({row['date']})",
            "",
            f"{row['params'] / 1e6:.2f} M parameters; budget {budget} (load {row['load']}); {row['epochs']} "
            f"epochs, {row['batches']} batches{wall}; {row['n']} samples of {row['bars']} bars"
            + (f"; overrides `{' '.join(row['overrides'])}`" if row["overrides"] else "")
            + f"; code {row.get('commit', 'unknown')}; run `{row['run_dir']}`.",
            "",
            run_table(row),
            "",
        ]
    if meta.get("notes"):
        lines += ["### Notes", "", meta["notes"].strip(), ""]
    lines.append(f"{DATA_MARK}{json.dumps(rows)} -->")
    return "\n".join(lines) + "\n"


def code_commit() -> str:
    """The commit the code runs from, marked when tracked files other than docs differ from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (
        " (with uncommitted changes)"
        if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs", ":!*.md")
        else ""
    )


def previous_rows(path: Path) -> tuple[list[dict[str, Any]], str]:
    """Rows and notes kept in the section by earlier runs."""
    section = read_section(path, SECTION) or ""
    rows: list[dict[str, Any]] = []
    if DATA_MARK in section:
        rows = json.loads(section.split(DATA_MARK, 1)[1].split(" -->", 1)[0])
    notes = section.split("### Notes\n", 1)[1].split(DATA_MARK, 1)[0] if "### Notes\n" in section else ""
    return rows, notes


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns the new rows."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from muselab.cli import parse_kv_args

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    ours, hydra_overrides = split_args(argv)
    args = parse_kv_args(ours, DEFAULTS)
    os.environ.setdefault("WANDB_MODE", "offline")
    names = [r.strip() for r in args["runs"].split(",") if r.strip()]
    unknown = [r for r in names if r not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
    commit = code_commit()
    rows = []
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in names:
            rows.append({**run_one(name, args, hydra_overrides), "commit": commit})
            print(f"\n{name}\n{run_table(rows[-1])}\n", flush=True)
    if args["docs"]:
        path = ROOT / args["docs"]
        kept, notes = previous_rows(path)
        merged = [r for r in kept if r["run"] not in names] + rows
        merged.sort(key=lambda r: list(RUNS).index(r["run"]))
        meta = {
            "command": "make bench-midinet " + " ".join(argv),
            "hardware": hardware(),
            "date": time.strftime("%Y-%m-%d"),
            "notes": notes,
        }
        replace_section(path, SECTION, render_section(merged, meta))
    return rows


if __name__ == "__main__":
    main()
