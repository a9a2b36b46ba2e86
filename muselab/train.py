"""Train a model: ``python -m muselab.train model=pianoroll_rnn data=bach key=value ...`` (or ``make train``).

Composes ``conf/train.yaml``, checks overrides, builds data -> model -> callbacks -> loggers ->
trainer, fits (resuming from ``ckpt_path`` if given), tests the best checkpoint and writes a few
MIDI samples to ``<run dir>/samples``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from muselab.cli import CONFIG_DIR, check_override_types, normalize_overrides
from muselab.errors import UserError, report_user_errors
from muselab.music.evaluation import write_midi
from muselab.utils import (
    auto_torch_threads,
    build_callbacks,
    build_loggers,
    instantiate_checked,
    log_run_summary,
)

log = logging.getLogger("muselab.train")


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns metrics and output paths."""
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
    callbacks = build_callbacks(cfg.get("callbacks"))
    loggers = build_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    run_config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    for logger in loggers:
        logger.log_hyperparams(run_config)

    if cfg.train:
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    datamodule.setup()
    if trainer.is_global_zero and loggers:
        log_run_summary(loggers, datamodule.data_summary())

    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if cfg.test and not trainer.fast_dev_run:
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best if best else None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    out_dir = Path(cfg.paths.output_dir)
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
    expanded), then Hydra."""
    sys.argv[1:] = normalize_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
