"""Compose MuseLab's Hydra config in tests the way `muselab.train` does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml with ``overrides``; set the Hydra runtime so ${hydra:...} resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.runtime.cwd = str(Path.cwd())
    HydraConfig.instance().set_config(cfg)
    return cfg


def small_train_overrides(tmp_path: Path, cache_dir: Path, *extra: str) -> list[str]:
    """A tiny, fast training run on the first 16 Bach chorales."""
    return [
        f"paths.cache_dir={cache_dir}",
        "data.source.limit=16",
        "data.batch_size=8",
        "data.window=32",
        "model.hidden_size=32",
        "model.num_layers=1",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "n_samples=1",
        "sample_length=32",
        "callbacks.progress_bar=null",
        "torch_threads=1",  # two xdist workers share the cores
        *extra,
    ]


def resolved(cfg: DictConfig) -> dict:
    """The run config (without the `hydra` node) with every interpolation resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
