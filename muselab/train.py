"""Train a model: ``python -m muselab.train model=pianoroll_rnn data=bach key=value ...`` (or ``make train``).

Composes ``conf/train.yaml``, checks overrides and settings, builds data -> model -> callbacks ->
loggers -> trainer, fits, tests the best checkpoint and writes a few MIDI samples to
``<run dir>/samples``. With ``ckpt_path=<checkpoint>`` the run resumes: in the checkpoint's own run
directory and W&B run, with its random state, refusing model or data settings that differ from the
run's (`muselab.runs`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from lightning_modules.base import CheckpointError, read_checkpoint
from muselab.cli import CONFIG_DIR, check_override_types, normalize_overrides
from muselab.errors import UserError, report_user_errors
from muselab.music.evaluation import write_midi
from muselab.runs import check_resume, resume_overrides, run_settings, wandb_run_id
from muselab.utils import (
    auto_torch_threads,
    build_callbacks,
    build_loggers,
    instantiate_checked,
    log_run_summary,
    run_summary,
)

log = logging.getLogger("muselab.train")

# A run directory ends in the process id, so two runs started in the same second never share one.
OmegaConf.register_new_resolver("muselab_pid", lambda: str(os.getpid()), replace=True)


def devices_per_node() -> int | str:
    """Processes per node as the launcher says (``SLURM_NTASKS_PER_NODE``, torchrun's
    ``LOCAL_WORLD_SIZE``); ``auto`` (every local GPU) outside both."""
    slurm = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # "4(x2)" on mixed allocations
    value = slurm or os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(value) if value.isdigit() else "auto"


def num_nodes() -> int:
    """Nodes as the launcher says (``SLURM_NNODES``; torchrun: ``WORLD_SIZE / LOCAL_WORLD_SIZE``); 1."""
    if (nodes := os.environ.get("SLURM_NNODES", "")).isdigit():
        return int(nodes)
    world, local = os.environ.get("WORLD_SIZE", ""), os.environ.get("LOCAL_WORLD_SIZE", "")
    if world.isdigit() and local.isdigit() and int(local) > 0:
        return max(1, int(world) // int(local))
    return 1


OmegaConf.register_new_resolver("muselab_devices_per_node", devices_per_node, replace=True)
OmegaConf.register_new_resolver("muselab_num_nodes", num_nodes, replace=True)


def validate_overrides(cfg: DictConfig) -> None:
    """Type-check value overrides against the defaults of the same config-group choices."""
    if not HydraConfig.initialized() or not GlobalHydra.instance().is_initialized():
        return  # composed outside a Hydra app (tests): nothing to compare against
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    overrides = list(hydra_cfg.overrides.task)
    group_overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in choices]
    value_overrides = [o for o in overrides if o not in group_overrides]
    if not value_overrides:
        return
    defaults = hydra.compose(config_name=hydra_cfg.job.config_name, overrides=group_overrides)
    check_override_types(defaults, value_overrides, cfg)


def check_run_settings(cfg: DictConfig) -> None:
    """Numeric run settings that cannot work fail at start-up, naming the key."""
    checks = {
        "n_samples": (cfg.get("n_samples"), lambda v: isinstance(v, int) and v >= 0, "a count >= 0"),
        "sample_length": (
            cfg.get("sample_length"),
            lambda v: v is None or (isinstance(v, int) and v > 0),
            "null or > 0",
        ),
        "torch_threads": (
            cfg.get("torch_threads"),
            lambda v: v is None or (isinstance(v, int) and v >= 0),
            "null, 0 (auto) or > 0",
        ),
        "sample_temperature": (
            cfg.get("sample_temperature"),
            lambda v: isinstance(v, int | float) and v >= 0,
            "a number >= 0 (0: the most likely choice)",
        ),
    }
    for key, (value, ok, expected) in checks.items():
        if not ok(value):
            raise UserError(f"{key}={value}: must be {expected}")


def check_layout(ckpt_path: str, model: L.LightningModule) -> None:
    """A checkpoint trained on another data layout is named, with the layout it needs."""
    saved = read_checkpoint(ckpt_path).get("hyper_parameters", {}).get("representation")
    current = model.representation.to_config()
    if saved and saved != current:
        differences = ", ".join(
            f"{k}: {saved.get(k)!r} (checkpoint) vs {current.get(k)!r} (now)"
            for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)
        )
        raise CheckpointError(f"ckpt_path={ckpt_path}: trained on another data layout ({differences})")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns metrics and output paths."""
    start = time.perf_counter()
    validate_overrides(cfg)
    # A value the data config leaves to the user (data.source.root: ???) is named in one line, not
    # in OmegaConf's traceback from deep inside instantiation.
    missing = sorted(
        key
        for top in cfg
        if top != "hydra" and OmegaConf.is_config(cfg._get_node(top))
        for key in OmegaConf.missing_keys(cfg[top])  # full keys (data.source.root)
    )
    if missing:
        raise UserError(f"{', '.join(missing)} must be given ({' '.join(f'{k}=...' for k in missing)})")
    check_run_settings(cfg)
    resume_from = cfg.get("ckpt_path")
    if resume_from:
        checkpoint = read_checkpoint(resume_from)  # a missing or corrupt file is named now, not later
        run_dir = check_resume(resume_from, cfg, checkpoint)
        del checkpoint
        if (
            run_dir is not None
            and (run_id := wandb_run_id(run_dir))
            and cfg.get("logger")
            and "wandb" in cfg.logger
        ):
            cfg.logger.wandb.id = run_id  # the same W&B run continues
    if cfg.get("flush_denormal", True) and cfg.trainer.get("accelerator") in ("cpu", "auto"):
        # Denormal floats (tiny Adam moments of rarely used weights) cost ~100 cycles each on x86
        # CPUs: one run slowed 3x as they accumulated. Flushing them to zero changes nothing else.
        torch.set_flush_denormal(True)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    threads = cfg.get("torch_threads")
    if threads is not None:
        devices = cfg.trainer.get("devices")
        processes = devices if isinstance(devices, int) and cfg.trainer.get("accelerator") == "cpu" else 1
        threads = int(threads) or auto_torch_threads(processes)
        torch.set_num_threads(threads)
        log.info("torch CPU threads: %d", threads)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = instantiate_checked(cfg.data)
    datamodule.check()  # a missing or empty data root fails here, before any model or logger exists
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate_checked(cfg.model, representation=datamodule.representation)
    model.run_settings = run_settings(cfg)
    n_params = sum(p.numel() for p in model.parameters())  # counted before a strategy shards them
    if resume_from:
        check_layout(resume_from, model)
    callbacks = build_callbacks(cfg.get("callbacks"))
    loggers = build_loggers(cfg.get("logger"))
    if (
        str(cfg.trainer.get("precision")).startswith("bf16")
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        # bf16 needs Ampere or newer; on an older GPU (V100, T4) fp16 with loss scaling is the mixed mode
        log.warning("trainer.precision=%s: this GPU has no bf16; using 16-mixed", cfg.trainer.precision)
        cfg.trainer.precision = "16-mixed"
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    run_config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    for logger in loggers:
        logger.log_hyperparams(run_config)

    if cfg.train:
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if cfg.test and not trainer.fast_dev_run:
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best if best else None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    out_dir = Path(cfg.paths.output_dir)
    datamodule.setup()
    if trainer.is_global_zero:
        summary_file = out_dir / "summary.json"
        # A resumed run adds its time to the earlier sessions' (it continues the same run directory).
        earlier = (
            json.loads(summary_file.read_text()).get("run/wall_seconds", 0.0)
            if resume_from and summary_file.is_file()
            else 0.0
        )
        summary = {
            **datamodule.data_summary(),  # pieces per split, skipped files, track routing
            **run_summary(trainer, model, metrics, n_params, earlier + time.perf_counter() - start),
        }
        if loggers:
            log_run_summary(loggers, summary)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary_file.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    samples: list[str] = []
    if trainer.is_global_zero and cfg.n_samples > 0:
        musics = model.sample(cfg.n_samples, cfg.sample_length, cfg.sample_temperature)
        samples = [str(p) for p in write_midi(musics, out_dir / "samples")]
        log.info("Wrote %d samples to %s", len(samples), out_dir / "samples")
    last = out_dir / "checkpoints" / "last.ckpt"
    log.info("Run directory: %s", out_dir)
    log.info("Best checkpoint: %s", best)
    for logger in loggers:
        logger.finalize("success")
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()  # close the run so the next one in this process starts fresh
    return {"metrics": metrics, "best_ckpt": best, "last_ckpt": str(last), "samples": samples}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    with report_user_errors("muselab.train"):
        train(cfg)


def main() -> None:
    """``python -m muselab.train key=value ...``: overrides as users type them (``~`` and ``$VAR``
    expanded), a resumed run pointed at its own directory, then Hydra."""
    sys.argv[1:] = resume_overrides(normalize_overrides(sys.argv[1:]))
    _hydra_main()


if __name__ == "__main__":
    main()
