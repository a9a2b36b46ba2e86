"""The MusicVAE benchmark (``make bench-musicvae``): reconstruction accuracy, hierarchical vs flat,
attribute vectors and interpolation smoothness, on the offline Essen folk songs.

``python -m muselab.bench.musicvae [key=value ...]`` runs, in order (each can be switched off):

- ``mel2``: ``model=musicvae`` (2-bar melodies) trained for ``mel2_minutes``; its best checkpoint
  (by validation sampled accuracy) is scored on the test split: teacher-forced and sampled
  accuracy, active units, KL;
- ``mel16``: ``model=musicvae_mel16`` with ``model.decoder=hierarchical`` and ``flat``, each trained
  for ``mel16_minutes`` (the same budget), scored the same way;
- ``analysis`` on the 2-bar checkpoint (``ckpt=`` to use another one):
  - **attribute vectors**: ``n_latents`` codes z ~ N(0, I) are decoded (argmax) at z + α·v for α in
    ``alphas``; per attribute, the mean change of the attribute against α = 0, and the share of
    codes whose attribute moved the way α points;
  - **interpolation smoothness**: ``n_pairs`` pairs of test windows (A, B); 8-step paths from
    A' = decode(μ_A) to B' = decode(μ_B), in latent space (slerp of μ, argmax decoding) and in data
    space (at step t each 16th-note event comes from B' with probability t, else from A'). For every
    attribute whose value differs at the two ends, the share of the path's 7 steps that move it
    towards B' (or leave it), and the share of paths that are monotone from end to end.

Arguments: ``runs`` (mel2,mel16,analysis), ``mel2_minutes`` (10), ``mel16_minutes`` (20),
``threads`` (2), ``ckpt`` (empty: the mel2 run's), ``n_latents`` (256), ``alphas`` (-2,-1,0,1,2),
``n_pairs`` (100), ``seed`` (1234), ``runs_dir`` (outputs/bench-musicvae). Any ``key=value`` with a
dot is a Hydra override for every training run. Prints Markdown tables and writes
``<runs_dir>/<stamp>/results.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from muselab.bench.markdown import cpu_model
from muselab.cli import parse_kv_args

log = logging.getLogger("muselab.bench.musicvae")

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = {
    "runs": "mel2,mel16,analysis",
    "mel2_minutes": 10.0,
    "mel16_minutes": 20.0,
    "threads": 2,
    "ckpt": "",
    "n_latents": 256,
    "alphas": "-2,-1,0,1,2",
    "n_pairs": 100,
    "seed": 1234,
    "runs_dir": "outputs/bench-musicvae",
}
# Attributes a monophonic melody has (polyphony is 1 everywhere).
MELODY_ATTRIBUTES = (
    "note_density",
    "pitch_range",
    "mean_pitch",
    "average_interval",
    "c_diatonic",
    "syncopation_16th",
    "syncopation_8th",
)


# --------------------------------------------------------------------------------------------- runs
class ValidationClock(Callback):
    """Writes the wall time since training started, the step and the validation figures at every
    validation to ``path`` (JSON), so a run's accuracy can be read against its budget."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.start = time.perf_counter()
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.rows.append(
            {
                "minutes": round((time.perf_counter() - self.start) / 60, 2),
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                **{
                    k: float(metrics[f"val/{k}"])
                    for k in ("accuracy", "sampled_accuracy", "kl")
                    if f"val/{k}" in metrics
                },
            }
        )
        self.path.write_text(json.dumps(self.rows, indent=1))


def max_time(minutes: float) -> str:
    seconds = max(1, round(minutes * 60))
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_run(
    name: str, overrides: list[str], minutes: float, args: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    """Train one config for ``minutes``, then score its best checkpoint on the test split."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from muselab.train import train

    run_dir = out_dir / name
    clock = run_dir / "validation_clock.json"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                *overrides,
                "logger=csv",
                "callbacks.progress_bar=null",
                f"trainer.max_time='{max_time(minutes)}'",
                "trainer.max_epochs=1000",
                f"torch_threads={args['threads']}",
                f"seed={args['seed']}",
                "n_samples=4",
                *args["hydra"],
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.callbacks.sample_music.n_audio = 0  # rendering audio is not what is being measured
        cfg.callbacks.validation_clock = {
            "_target_": "muselab.bench.musicvae.ValidationClock",
            "path": str(clock),
        }
    HydraConfig.instance().set_config(cfg)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - start
    metrics = out["metrics"]
    checkpoint = torch.load(out["best_ckpt"], map_location="cpu", weights_only=False)
    return {
        "name": name,
        "overrides": overrides + args["hydra"],
        "minutes": minutes,
        "threads": args["threads"],
        "load_at_start": round(load, 1),
        "wall_s": round(wall, 1),
        "best_ckpt": out["best_ckpt"],
        "best_step": checkpoint["global_step"],
        "best_epoch": checkpoint["epoch"],
        "params": sum(v.numel() for k, v in checkpoint["state_dict"].items() if "attribute" not in k),
        "history": json.loads(clock.read_text()) if clock.exists() else [],
        **{
            k: metrics.get(f"test/{k}")
            for k in ("accuracy", "sampled_accuracy", "active_units", "kl", "recon")
        },
    }


# --------------------------------------------------------------------------------------------- analysis
def attributes_of(musics: list[Any]) -> np.ndarray:
    from lightning_modules.musicvae import music_attributes

    return np.array([[music_attributes(m)[a] for a in MELODY_ATTRIBUTES] for m in musics], dtype=np.float64)


def attribute_shifts(model: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    """How far adding α attribute vectors moves each attribute of decoded prior samples."""
    from lightning_modules.musicvae import ATTRIBUTES

    g = torch.Generator().manual_seed(args["seed"])
    z = torch.randn(args["n_latents"], model.z_size, generator=g)
    alphas = [float(a) for a in str(args["alphas"]).split(",")]
    rows = []
    base = attributes_of(model.decode(z))
    for name in MELODY_ATTRIBUTES:
        index = ATTRIBUTES.index(name)
        if not bool(model.attribute_defined[index]):
            continue
        column = MELODY_ATTRIBUTES.index(name)
        vector = model.attribute_vectors[index].cpu()
        row: dict[str, Any] = {
            "attribute": name,
            "vector_norm": float(vector.norm()),
            "mean": {},
            "moved": {},
        }
        for alpha in alphas:
            values = base if alpha == 0 else attributes_of(model.decode(z + alpha * vector))
            delta = values[:, column] - base[:, column]
            known = np.isfinite(delta)
            row["mean"][alpha] = float(np.nanmean(values[:, column]))
            if alpha != 0:
                row["moved"][alpha] = float(np.mean(np.sign(delta[known]) == np.sign(alpha)))
        rows.append(row)
    return rows


def monotone_shares(values: np.ndarray) -> tuple[list[float], list[bool]]:
    """For a path ``(steps, attributes)``: per attribute whose ends differ, the share of steps that
    move it towards the end value (or leave it), and whether the whole path is monotone."""
    shares, monotone = [], []
    for column in range(values.shape[1]):
        path = values[:, column]
        if not np.isfinite(path).all() or path[-1] == path[0]:
            continue
        direction = np.sign(path[-1] - path[0])
        good = np.sign(np.diff(path)) * direction >= 0
        shares.append(float(good.mean()))
        monotone.append(bool(good.all()))
    return shares, monotone


def interpolation_smoothness(
    model: Any, test_windows: list[np.ndarray], args: dict[str, Any]
) -> dict[str, Any]:
    """Latent against data-space interpolation between decoded test windows (see the module docstring)."""
    from lightning_modules.musicvae import interpolate_latents

    rng = np.random.default_rng(args["seed"])
    steps = 8
    latent_shares, latent_monotone, data_shares, data_monotone = [], [], [], []
    pairs = 0
    while pairs < args["n_pairs"]:
        i, j = rng.choice(len(test_windows), 2, replace=False)
        z = model.encode([test_windows[i], test_windows[j]])
        ends = model.decode_arrays(z).cpu().numpy()
        if np.array_equal(ends[0], ends[1]):
            continue
        pairs += 1
        path = model.decode(interpolate_latents(z[0], z[1], steps, "slerp"))
        shares, monotone = monotone_shares(attributes_of(path))
        latent_shares += shares
        latent_monotone += monotone
        data_path = []
        for t in np.linspace(0.0, 1.0, steps):
            take_b = rng.random(ends.shape[1]) < t
            data_path.append(model.representation.decode(np.where(take_b, ends[1], ends[0])))
        shares, monotone = monotone_shares(attributes_of(data_path))
        data_shares += shares
        data_monotone += monotone
    return {
        "pairs": pairs,
        "steps": steps,
        "latent_step_share": float(np.mean(latent_shares)),
        "latent_monotone_paths": float(np.mean(latent_monotone)),
        "data_step_share": float(np.mean(data_shares)),
        "data_monotone_paths": float(np.mean(data_monotone)),
        "paths_measured": len(latent_monotone),
    }


def analysis(ckpt: str, args: dict[str, Any]) -> dict[str, Any]:
    from datamodules import MusicDataModule
    from datamodules.sources import EssenSource
    from lightning_modules.base import load_model

    model = load_model(ckpt)
    datamodule = MusicDataModule(
        EssenSource(),
        model.representation,
        cache_dir=str(ROOT / ".cache" / "muselab"),
        window=model.steps,
        stride=model.steps,
        min_steps=model.steps,
    )
    datamodule.setup()
    test = datamodule.datasets["test"]
    windows = [test[i]["x"].numpy() for i in range(len(test))]
    return {
        "ckpt": ckpt,
        "attributes": attribute_shifts(model, args),
        "smoothness": interpolation_smoothness(model, windows, args),
    }


# --------------------------------------------------------------------------------------------- report
def markdown(results: dict[str, Any]) -> str:
    lines = []
    runs = results.get("runs", [])
    if runs:
        lines += [
            "| run | params | budget | best step (epoch) | test accuracy (teacher-forced) | test sampled accuracy "
            "| active units | test KL (nats) |",
            "|---|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in runs:
            lines.append(
                f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['minutes']:g} min, "
                f"{r['threads']} thread{'' if int(r['threads']) == 1 else 's'}, "
                f"load {r['load_at_start']} | {r['best_step']} ({r['best_epoch']}) | {r['accuracy']:.4f} "
                f"| **{r['sampled_accuracy']:.4f}** | {r['active_units']:.0f} | {r['kl']:.1f} |"
            )
        lines.append("")
        for r in runs:
            curve = ", ".join(
                f"{h['minutes']:.1f} min (step {h['step']}): {h['accuracy']:.3f}/{h['sampled_accuracy']:.3f}"
                for h in r["history"]
            )
            lines.append(f"- {r['name']}, validation accuracy teacher-forced/sampled: {curve}")
        lines.append("")
    analysis_ = results.get("analysis")
    if analysis_:
        alphas = sorted({float(a) for row in analysis_["attributes"] for a in row["mean"]})
        lines += [
            "| attribute | "
            + " | ".join(f"mean at α={a:+g}" for a in alphas)
            + " | moved the way α points (α=-1 / +1) |",
            "|---|" + "---:|" * len(alphas) + "---:|",
        ]
        for row in analysis_["attributes"]:
            means = " | ".join(f"{row['mean'][a]:.3f}" for a in alphas)
            moved = f"{row['moved'].get(-1.0, math.nan):.0%} / {row['moved'].get(1.0, math.nan):.0%}"
            lines.append(f"| {row['attribute']} | {means} | {moved} |")
        s = analysis_["smoothness"]
        lines += [
            "",
            f"Interpolation smoothness ({s['pairs']} pairs of test windows, {s['steps']} steps, "
            f"{s['paths_measured']} attribute paths):",
            "",
            "| path | steps moving towards B (or not at all) | monotone paths |",
            "|---|---:|---:|",
            f"| latent (slerp of μ, argmax) | {s['latent_step_share']:.1%} | {s['latent_monotone_paths']:.1%} |",
            f"| data space (each event from B' with probability t) | {s['data_step_share']:.1%} "
            f"| {s['data_monotone_paths']:.1%} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    hydra_overrides = [a for a in argv if "." in a.split("=", 1)[0]]
    args = parse_kv_args([a for a in argv if a not in hydra_overrides], DEFAULTS)
    args["hydra"] = hydra_overrides
    torch.set_num_threads(int(args["threads"]))
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    out_dir = (ROOT / args["runs_dir"] / stamp).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [r.strip() for r in str(args["runs"]).split(",") if r.strip()]
    results: dict[str, Any] = {
        "command": "python -m muselab.bench.musicvae " + " ".join(argv),
        "hardware": f"{cpu_model(platform.processor())}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "runs": [],
    }
    ckpt = args["ckpt"]
    if "mel2" in runs:
        row = train_run("musicvae (2-bar, flat)", ["model=musicvae"], args["mel2_minutes"], args, out_dir)
        results["runs"].append(row)
        ckpt = ckpt or row["best_ckpt"]
    if "mel16" in runs:
        for decoder in ("hierarchical", "flat"):
            overrides = ["model=musicvae_mel16", f"model.decoder={decoder}"]
            results["runs"].append(
                train_run(
                    f"musicvae_mel16 ({decoder})", overrides, args["mel16_minutes"], args, out_dir / "mel16"
                )
            )
    if "analysis" in runs:
        if not ckpt:
            raise SystemExit("analysis needs a checkpoint: run mel2 or give ckpt=...")
        torch.set_num_threads(int(args["threads"]))
        results["analysis"] = analysis(ckpt, args)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(markdown(results))
    print(f"\nresults: {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
