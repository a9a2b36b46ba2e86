"""The config tree: every model x data composes, and bad keys or types fail at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from lightning_modules.base import GenerativeModule, IncompatibleRepresentation
from muselab.utils import instantiate_checked
from tests.helpers import CONF_DIR, compose_train
from tests.helpers import resolved as resolved_config

MODELS = sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml"))
DATAS = sorted(p.stem for p in Path(CONF_DIR, "data").glob("*.yaml") if not p.stem.startswith("_"))
REPRESENTATIONS = sorted(p.stem for p in Path(CONF_DIR, "representation").glob("*.yaml"))
# Values a data config leaves as ??? (a local path the user must give).
REQUIRED = {"data.source.root": "/tmp/none", "data.source.path": "/tmp/none.mat"}


def fill_required(data: str) -> list[str]:
    text = Path(CONF_DIR, "data", f"{data}.yaml").read_text()
    return [f"{k}={v}" for k, v in REQUIRED.items() if f"{k.rsplit('.', 1)[-1]}: ???" in text]


def model_representation(model: str) -> str:
    """The representation a model config chooses (`override /representation: ...`)."""
    text = Path(CONF_DIR, "model", f"{model}.yaml").read_text()
    return text.split("override /representation:", 1)[1].split()[0]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", DATAS)
def test_every_model_builds_on_every_data(model: str, data: str, tmp_path: Path) -> None:
    """Every model x data pair composes, and its representation and model are really built."""
    cfg = compose_train([f"model={model}", f"data={data}", *fill_required(data)], output_dir=tmp_path)
    resolved = resolved_config(cfg)
    assert resolved["model_name"] == model and resolved["data_name"] == data
    assert resolved["logger"]["wandb"]["offline"] is True
    assert cfg.hydra.runtime.choices.representation == model_representation(model)
    representation = instantiate(cfg.data.representation, _convert_="all")
    built = instantiate_checked(cfg.model, representation=representation)
    assert isinstance(built, GenerativeModule)
    assert built.representation.to_config() == representation.to_config()
    assert resolved["callbacks"]["model_checkpoint"]["monitor"] == built.monitor


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_a_model_over_a_representation_it_cannot_read_fails_clearly(
    model: str, representation: str, tmp_path: Path
) -> None:
    cfg = compose_train([f"model={model}", f"representation={representation}"], output_dir=tmp_path)
    built = instantiate(cfg.representation, _convert_="all")
    # A model class that reads several kinds of representation says which (`reads`: MusicVAE reads
    # melodies, trios and piano-rolls); any other model reads only the one its config chooses.
    reads = getattr(get_class(cfg.model._target_), "reads", ())
    if representation == model_representation(model) or built.kind in reads:
        instantiate_checked(cfg.model, representation=built)
        return
    with pytest.raises(IncompatibleRepresentation, match=r"needs a .* representation"):
        instantiate_checked(cfg.model, representation=built)


def test_cli_rejects_an_incompatible_representation_in_one_line(tmp_path: Path) -> None:
    result = run_train_cli("model=pianoroll_rnn", "representation=melody", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "error: PianoRollRNN needs a piano-roll representation" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp"])
@pytest.mark.parametrize("logger", ["wandb", "csv", "tensorboard", "none", "many"])
def test_trainer_and_logger_configs_compose(trainer: str, logger: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={trainer}", f"logger={logger}"], output_dir=tmp_path)
    resolved_config(cfg)
    assert cfg.trainer._target_.endswith("Trainer")


def test_unknown_key_fails_at_compose(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="hidden_sise"):
        compose_train(["model.hidden_sise=3"], output_dir=tmp_path)


def run_train_cli(*overrides: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "muselab.train", *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(CONF_DIR).parent,
        env={**__import__("os").environ, "HYDRA_FULL_ERROR": "0"},
    )


def test_cli_unknown_key_names_it() -> None:
    result = run_train_cli("trainer.max_epoks=3", "hydra.run.dir=/tmp/muselab-test-bad")
    assert result.returncode != 0
    assert "max_epoks" in result.stderr + result.stdout


def test_cli_wrong_type_names_key(tmp_path: Path) -> None:
    result = run_train_cli("trainer.max_epochs=many", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    out = result.stderr + result.stdout
    assert "trainer.max_epochs" in out and "expects int" in out


EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_its_model_named_twice(experiment: str, tmp_path: Path) -> None:
    """The README runs presets as `make train MODEL=<m> experiment=<e>`: the preset's own model
    override and the command line's must compose together, and every preset key must be real."""
    text = Path(CONF_DIR, "experiment", f"{experiment}.yaml").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if "override /model:" in line), None
    )
    overrides = [f"experiment={experiment}"]
    if model:
        overrides.insert(0, f"model={model}")
    cfg = compose_train(overrides, output_dir=tmp_path)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg["_target_"]
    if experiment.endswith("_paper"):  # Magenta's sizes reach the model config
        assert (cfg.layout.pitch_low, cfg.layout.pitch_high) == (21, 108)
        assert model_cfg["z_size"] in (256, 512) and model_cfg["encoder_size"] in (512, 2048)
        assert cfg.trainer.max_time is None
