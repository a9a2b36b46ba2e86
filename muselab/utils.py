"""Glue shared by the entry points: config checks, logger/callback building, W&B safety, samples."""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import muspy
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger("muselab")

WANDB_HOST = ("api.wandb.ai", 443)


class ConfigTypeError(TypeError):
    """An override whose value has the wrong type for its key."""


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_override_types(defaults: DictConfig, overrides: Iterable[str], composed: DictConfig) -> None:
    """Fail early when ``key=value`` gives a value of another type than the key's default.

    ``defaults`` is the config composed with the same config-group choices but no value overrides.
    Ints may replace floats; a default of null accepts anything; a value of null is always allowed.
    """
    for override in overrides:
        key, sep, _ = override.lstrip("+~").partition("=")
        if not sep or ("." not in key and key in (defaults.get("hydra", {}) or {})):
            continue
        try:
            default = OmegaConf.select(defaults, key, throw_on_missing=False)
            value = OmegaConf.select(composed, key, throw_on_missing=False)
        except Exception:  # interpolations that need the runtime are not checked here
            continue
        if default is None or value is None or isinstance(default, DictConfig | ListConfig):
            continue
        if isinstance(default, bool) != isinstance(value, bool):
            bad = True
        elif isinstance(default, float):
            bad = not isinstance(value, int | float)
        elif isinstance(default, int | str):
            bad = not isinstance(value, type(default))
        else:
            bad = False
        if bad:
            raise ConfigTypeError(
                f"config key '{key}' expects {_type_name(default)} (default {default!r}), got "
                f"{_type_name(value)} {value!r} from override '{override}'"
            )


def busy_cores(sample_seconds: float = 0.25) -> float:
    """Cores that other work keeps busy right now.

    On Linux, the non-idle share of all CPU time over a short sample (``/proc/stat``), times the
    number of CPUs. The 1-minute load average, the fallback elsewhere, lags: right after a heavy
    job ends it still reads busy, which had a run that started then train on half the cores.
    """

    def cpu_times() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            # user nice system idle iowait irq softirq steal
            values = [int(v) for v in stat.readline().split()[1:9]]
        return values[3] + values[4], sum(values)

    try:
        idle_before, total_before = cpu_times()
        time.sleep(sample_seconds)
        idle_after, total_after = cpu_times()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = total_after - total_before
    idle = idle_after - idle_before
    return (os.cpu_count() or 1) * (1 - idle / total) if total > 0 else 0.0


def auto_torch_threads(processes: int = 1) -> int:
    """Torch CPU threads per process from the cores idle right now (at least 1).

    Small recurrent models gain from a second thread on a quiet machine (one default-run epoch:
    26 s on 1 thread, 16 s on 2) but slow down many times over when the threads have to fight
    other jobs for the cores, so cores that are busy now (`busy_cores`) are left alone.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = round(busy_cores())
    return max(1, min(torch.get_num_threads(), (cores - busy) // max(1, processes)))


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a TCP connection to the W&B API? (Never waits longer than ``timeout``.)"""
    try:
        with socket.create_connection(WANDB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def build_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Instantiate the configured loggers. W&B goes online only when asked for and reachable."""
    loggers: list[Logger] = []
    for name, conf in (cfg or {}).items():
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            continue
        if conf._target_.endswith("WandbLogger"):
            conf = OmegaConf.to_container(conf, resolve=True)
            if not conf.get("offline", True) and os.environ.get("WANDB_MODE") != "disabled":
                if wandb_reachable():
                    os.environ["WANDB_MODE"] = "online"
                else:
                    warnings.warn(
                        "W&B online was asked for but api.wandb.ai is unreachable: logging offline.",
                        stacklevel=2,
                    )
                    conf["offline"] = True
            if conf.get("offline", True):
                os.environ["WANDB_MODE"] = "offline"
            os.environ.setdefault("WANDB_SILENT", "true")
            Path(conf["save_dir"]).mkdir(parents=True, exist_ok=True)
        log.info("Logger %s: %s", name, conf["_target_"] if isinstance(conf, dict) else conf._target_)
        loggers.append(instantiate(conf))
    return loggers


def build_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Instantiate every callback config that has a ``_target_``."""
    return [instantiate(c) for c in (cfg or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def log_run_summary(loggers: list[Logger], summary: dict[str, Any]) -> None:
    """Put run-level facts (data counts, skipped files) where each logger keeps them."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for key, value in summary.items():
                logger.experiment.summary[key] = value if isinstance(value, int | float | str) else str(value)
        else:
            logger.log_hyperparams(
                {k: v if isinstance(v, int | float | str) else str(v) for k, v in summary.items()}
            )


def write_midi(musics: list[muspy.Music], out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """Write each `muspy.Music` to ``out_dir/<prefix>_NN.mid`` (atomically) and return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, music in enumerate(musics):
        path = out_dir / f"{prefix}_{i:02d}.mid"
        tmp = path.with_name(f".{path.name}.tmp")
        muspy.write_midi(tmp, music)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def parse_kv_args(argv: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Parse ``key=value`` arguments against ``defaults`` (types follow the defaults; unknown keys fail)."""
    out = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {arg!r}")
        if key not in defaults:
            raise SystemExit(f"unknown argument {key!r}; known: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in {"1", "true", "yes"}
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value if value.lower() not in {"null", "none", ""} else None
    return out
