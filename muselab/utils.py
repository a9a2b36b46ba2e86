"""Glue shared by the entry points: logger and callback building, W&B safety, CPU threads."""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("muselab")

WANDB_HOST = ("api.wandb.ai", 443)


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


# Final figures a run summary keeps: losses, sample/ music metrics, overfit/ measures, data/ ones.
SUMMARY_PREFIXES = ("train/", "val/", "test/", "sample/", "overfit/", "data/")


def run_summary(
    trainer: Any, model: Any, metrics: dict[str, float], n_params: int, wall_seconds: float
) -> dict[str, Any]:
    """What a run's summary holds for dashboards and `make compare`: the best value of the model's
    monitored metric (``best/<monitor>``) and its checkpoint, the final figures of every logged
    ``SUMMARY_PREFIXES`` metric, the parameter count (``model/params``), the epochs and steps run and
    the wall time (``run/wall_seconds``, every session of a resumed run together)."""
    monitor = getattr(model, "monitor", "val/loss")
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_score", None)
    summary: dict[str, Any] = {
        k: float(v)
        for k, v in sorted(metrics.items())
        if k.startswith(SUMMARY_PREFIXES) and not k.endswith("_step")
    }
    if best is not None:
        summary[f"best/{monitor}"] = float(best)
        if getattr(callback, "best_model_path", ""):
            summary["best/checkpoint"] = os.path.relpath(callback.best_model_path, trainer.default_root_dir)
    elif monitor in summary:
        summary[f"best/{monitor}"] = summary[monitor]
    summary["model/params"] = int(n_params)
    summary["run/epochs"] = int(trainer.current_epoch)
    summary["run/global_step"] = int(trainer.global_step)
    summary["run/wall_seconds"] = round(float(wall_seconds), 2)
    return summary


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


def instantiate_checked(config: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` (``_convert_="all"``), re-raising a `UserError` from the constructor
    as itself: Hydra wraps it in an ``InstantiationException`` whose message hides it in a traceback."""
    from hydra.errors import InstantiationException

    from muselab.errors import UserError

    try:
        return instantiate(config, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
