"""Denormal floats and CPU training speed: ``make bench-denormal``.

x86 CPUs handle denormal floats (below float32's smallest normal, 1.2e-38) in microcode, tens to
hundreds of times slower than normal ones. Adam's moment estimates of weights whose gradients stay
tiny decay into that range over long runs, and every optimiser step then pays for them. MuseLab flushes
denormals to zero on the CPU (``flush_denormal: true``); this benchmark shows what that buys:

1. one AdamW step over a weight whose moments and gradient are denormal, flush off vs on;
2. a long training run, the same seed twice, flush on and off: seconds per epoch and the count of
   denormal values in the optimiser state at the end of each epoch.

Arguments (``key=value``): ``epochs`` (6), ``threads`` (1), ``docs`` (docs/benchmarks.md; empty:
print only), ``allow_dirty`` (false); anything with a dot is a Hydra override for both runs
(default data: the Essen folk songs as a one-track piano-roll over the 88 piano keys, where most
pitch columns are rarely used).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from muselab.bench.markdown import cpu_model, replace_section, require_committed
from muselab.cli import parse_kv_args

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Denormal floats (make bench-denormal)"
DEFAULTS: dict[str, Any] = {"epochs": 6, "threads": 1, "docs": "docs/benchmarks.md", "allow_dirty": False}
RUN_OVERRIDES = [
    "data=essen",
    "layout.pitch_low=21",
    "layout.pitch_high=108",
    "model.head=bernoulli",
    "logger=none",
    "callbacks.sample_music=null",
    "n_samples=0",
    "test=false",
]


def count_denormals(optimizer: torch.optim.Optimizer) -> int:
    """Non-zero float values smaller than the smallest normal of their dtype, over the optimiser state."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.is_floating_point() and value.numel() > 1:
                tiny = torch.finfo(value.dtype).tiny
                total += int(((value != 0) & (value.abs() < tiny)).sum())
    return total


class EpochClock(L.Callback):
    """Seconds per training epoch and denormals in the optimiser state after it, also written to
    ``<run dir>/epoch_clock.json``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "seconds": round(time.perf_counter() - self._start, 2),
                "steps": trainer.num_training_batches,
                "denormals": count_denormals(trainer.optimizers[0]),
            }
        )
        (Path(trainer.default_root_dir) / "epoch_clock.json").write_text(json.dumps(self.rows))


def adam_step_seconds(flush: bool, size: int = 1 << 20, repeats: int = 20) -> float:
    """Best time of one AdamW step over ``size`` weights whose gradient and moments are denormal."""
    torch.set_flush_denormal(flush)
    weight = torch.nn.Parameter(torch.ones(size))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    weight.grad = torch.full((size,), 1e-39)
    optimizer.step()
    best = float("inf")
    for _ in range(repeats):
        weight.grad = torch.full((size,), 1e-39)
        state = optimizer.state[weight]
        state["exp_avg"].fill_(1e-39)
        state["exp_avg_sq"].fill_(1e-39)
        start = time.perf_counter()
        optimizer.step()
        best = min(best, time.perf_counter() - start)
    torch.set_flush_denormal(False)
    return best


def training_run(flush: bool, epochs: int, threads: int, overrides: list[str]) -> list[dict[str, Any]]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from muselab.train import train

    GlobalHydra.instance().clear()
    output = ROOT / "outputs" / "bench-denormal" / f"flush-{flush}-{time.strftime('%Y%m%d-%H%M%S')}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *RUN_OVERRIDES,
                f"trainer.max_epochs={epochs}",
                f"torch_threads={threads}",
                f"flush_denormal={str(flush).lower()}",
                "+callbacks.epoch_clock._target_=muselab.bench.denormal.EpochClock",
                *overrides,
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output)
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig.instance().set_config(cfg)
    torch.set_flush_denormal(False)  # train() turns it on when flush_denormal is true
    try:
        train(cfg)
    finally:
        torch.set_flush_denormal(False)
    return json.loads((output / "epoch_clock.json").read_text())


def render(micro: dict[str, float], runs: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        "Denormal floats (below 1.2e-38 in float32) are slow on x86 CPUs. MuseLab flushes them to zero "
        "during CPU training (`flush_denormal: true`, `flush_denormal=false` turns it off); "
        "`muselab.bench.denormal` measures what that changes.",
        "",
        f"- Command: `{meta['command']}` (commit {meta['commit']})",
        f"- Machine: {meta['machine']}, {meta['threads']} torch thread(s); updated {meta['date']}",
        f"- Training run: `python -m muselab.train {' '.join(meta['overrides'])}`",
        "",
        "One AdamW step over 1 M weights whose gradient and moments are denormal:",
        "",
        "| flush_denormal | seconds per step |",
        "|---|---:|",
        f"| false | {micro['off']:.4f} |",
        f"| true | {micro['on']:.4f} |",
        "",
        "The training run, same seed, flush on and off:",
        "",
        "| epoch | steps | s (flush off) | denormals in Adam state (off) | s (flush on) | denormals (on) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for off, on in zip(runs["off"], runs["on"]):
        lines.append(
            f"| {off['epoch']} | {off['steps']} | {off['seconds']:.1f} | {off['denormals']:,} | {on['seconds']:.1f} "
            f"| {on['denormals']:,} |"
        )
    total_off, total_on = (sum(r["seconds"] for r in runs[k]) for k in ("off", "on"))
    lines += ["", f"Total: {total_off / 60:.1f} min with denormals, {total_on / 60:.1f} min flushed.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    ours = [a for a in argv if "." not in a.partition("=")[0]]
    overrides = [a for a in argv if "." in a.partition("=")[0]]
    args = parse_kv_args(ours, DEFAULTS)
    commit = require_committed(ROOT, args["allow_dirty"]) if args["docs"] else "not recorded"
    torch.set_num_threads(args["threads"])
    micro = {"off": adam_step_seconds(False), "on": adam_step_seconds(True)}
    print(json.dumps(micro))
    runs = {
        "off": training_run(False, args["epochs"], args["threads"], overrides),
        "on": training_run(True, args["epochs"], args["threads"], overrides),
    }
    print(json.dumps(runs))
    if args["docs"]:
        meta = {
            "command": " ".join(["make bench-denormal", *argv]),
            "commit": commit,
            "machine": f"{cpu_model()}, shared 2-core machine",
            "threads": args["threads"],
            "date": time.strftime("%Y-%m-%d"),
            "overrides": [*RUN_OVERRIDES, f"trainer.max_epochs={args['epochs']}", *overrides],
        }
        replace_section(ROOT / args["docs"], SECTION, render(micro, runs, meta))
    return {"micro": micro, "runs": runs}


if __name__ == "__main__":
    main()
