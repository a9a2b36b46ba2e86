"""W&B never hangs: asking for online without a network falls back to offline with a warning."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from muselab.utils import build_loggers, wandb_reachable


def test_online_request_without_network_falls_back_to_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if wandb_reachable(timeout=2):
        pytest.skip("this machine can reach W&B; the fallback path needs no network")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key set + no network is what makes wandb.init hang
    cfg = OmegaConf.create(
        {
            "wandb": {
                "_target_": "lightning.pytorch.loggers.wandb.WandbLogger",
                "project": "muselab-test",
                "name": "fallback",
                "save_dir": str(tmp_path),
                "offline": False,
            }
        }
    )
    start = time.time()
    with pytest.warns(UserWarning, match="unreachable"):
        [logger] = build_loggers(cfg)
    logger.log_metrics({"x": 1.0})
    logger.experiment.finish()
    assert time.time() - start < 60
    assert list((tmp_path / "wandb").glob("offline-run-*"))
