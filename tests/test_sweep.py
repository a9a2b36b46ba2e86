"""Sweeps: every W&B sweep file in conf/sweep/ is valid for the model it names, W&B's distributions
and methods map to Optuna's, and an offline sweep really runs trials that `make compare` shows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_modules.base import GenerativeModule
from muselab.cli import value_fits
from muselab.sweep import (
    ARGS_MACRO,
    SWEEP_DIR,
    SweepError,
    check_sweep,
    compose_sweep_config,
    hydra_value,
    load_sweep,
    make_pruner,
    make_sampler,
    online_config,
    suggest,
    trial_command,
    wants_online,
)
from muselab.utils import instantiate_checked
from tests.helpers import CONF_DIR

SWEEPS = sorted(p.name for p in SWEEP_DIR.glob("*.yaml"))
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_every_model_has_a_sweep() -> None:
    models = {p.stem for p in Path(CONF_DIR, "model").glob("*.yaml")}
    swept = {load_sweep(name).model for name in SWEEPS}
    assert models <= swept, f"models without a sweep file: {sorted(models - swept)}"


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_is_valid_for_its_model(name: str) -> None:
    """Parameters are keys of the named model's config, and the values Optuna draws from each
    distribution, written as W&B writes them, reach Hydra with the key's type; the whole set of
    overrides of a drawn trial composes."""
    spec = load_sweep(name)
    cfg = check_sweep(spec)
    assert spec.command[-1] == ARGS_MACRO and f"model={spec.model}" in spec.command
    assert spec.metric == cfg.model.monitor, (
        f"{name}: optimises {spec.metric}, the model monitors {cfg.model.monitor}"
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        drawn = {p.name: suggest(trial, p) for p in spec.parameters}
        for param in spec.parameters:
            if not param.adds_key:
                default = OmegaConf.select(cfg, param.key)
                assert value_fits(default, hydra_value(param.key, drawn[param.name])), (param.name, default)
        composed = compose_sweep_config(spec, [f"{k}={v}" for k, v in drawn.items()])
        for param in spec.parameters:
            assert OmegaConf.select(composed, param.key) == hydra_value(param.key, drawn[param.name])
        # The drawn values build the model (a head option the head does not take would fail here).
        representation = instantiate(composed.data.representation, _convert_="all")
        assert isinstance(
            instantiate_checked(composed.model, representation=representation), GenerativeModule
        )


def _write(tmp_path: Path, parameters: dict, method: str = "random", **extra) -> Path:
    spec = {
        "program": "muselab/train.py",
        "method": method,
        "metric": {"name": "val/loss", "goal": "minimize"},
        "parameters": parameters,
        "command": ["${env}", "python", "-m", "muselab.train", "model=pianoroll_rnn", ARGS_MACRO],
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("parameters", "method", "message"),
    [
        ({"model.hidden_sise": {"values": [64]}}, "random", "not a key of the pianoroll_rnn config"),
        ({"+model.hidden_size": {"values": [64]}}, "random", "already exists; name it without '+'"),
        ({"model.hidden_size": {"min": 32.0, "max": 64.0}}, "random", "expects int"),
        (
            {"model.num_layers": {"distribution": "q_uniform", "min": 1, "max": 3}},
            "random",
            "use int_uniform",
        ),
        ({"model.cell": {"values": [1, 2]}}, "random", "expects str"),
        ({"model.dropout": {"values": [None, 0.1]}}, "random", "write 'null'"),
        ({"model.dropout": {"min": 0.5, "max": 0.1}}, "random", "must be below max"),
        ({"model.dropout": {"min": 0.0, "max": 0.5}}, "grid", "method=grid needs values"),
        ({"model.dropout": {"distribution": "gamma", "min": 0, "max": 1}}, "random", "not one of W&B's"),
        ({"model": {"parameters": {"dropout": {"values": [0.1]}}}}, "random", "nested parameters"),
        ({"+nothing.here": {"values": [1]}}, "random", "is not a node"),
    ],
)
def test_bad_sweep_files_are_named(tmp_path: Path, parameters: dict, method: str, message: str) -> None:
    with pytest.raises(SweepError, match=message.replace("+", r"\+")) as err:
        check_sweep(load_sweep(_write(tmp_path, parameters, method)))
    assert str(tmp_path / "sweep.yaml") in str(err.value)


def test_metric_must_be_logged_every_epoch(tmp_path: Path) -> None:
    path = _write(tmp_path, {"model.dropout": {"values": [0.1]}})
    spec = yaml.safe_load(path.read_text())
    spec["metric"]["name"] = "test/loss"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match="every validated epoch"):
        check_sweep(load_sweep(path))


def test_a_new_key_is_added_with_plus(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, {"+model.head_kwargs.temperature_floor": {"values": [0.1, 0.2]}}))
    check_sweep(spec)
    command = trial_command(spec, ["+model.head_kwargs.temperature_floor=0.1"])
    assert command[-1] == "+model.head_kwargs.temperature_floor=0.1"


def _draws(param_spec: dict, n: int = 300) -> list:
    from muselab.sweep import Parameter

    param = Parameter("x", param_spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    return [suggest(study.ask(), param) for _ in range(n)]


def test_wandb_distributions_map_to_optuna() -> None:
    ints = _draws({"min": 2, "max": 5})
    assert all(isinstance(v, int) for v in ints) and set(ints) == {2, 3, 4, 5}
    uniform = _draws({"distribution": "uniform", "min": 0.1, "max": 0.2})
    assert all(0.1 <= v <= 0.2 for v in uniform) and all(isinstance(v, float) for v in uniform)
    q = _draws({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25})
    assert set(q) <= {0.0, 0.25, 0.5, 0.75, 1.0} and len(set(q)) >= 4
    logs = _draws({"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1})
    decades = [math.floor(math.log10(v)) for v in logs]
    assert all(1e-4 <= v <= 1e-1 for v in logs) and {decades.count(d) > 60 for d in (-4, -3, -2)} == {True}
    natural = _draws({"distribution": "log_uniform", "min": math.log(1e-3), "max": math.log(1.0)})
    assert all(1e-3 * 0.999 <= v <= 1.0 for v in natural) and min(natural) < 1e-2
    inverse = _draws({"distribution": "inv_log_uniform_values", "min": 0.01, "max": 1.0})
    assert all(0.01 <= v <= 1.0 for v in inverse)
    normal = _draws({"distribution": "normal", "mu": 3.0, "sigma": 0.5}, n=600)
    mean = sum(normal) / len(normal)
    sd = (sum((v - mean) ** 2 for v in normal) / len(normal)) ** 0.5
    assert abs(mean - 3.0) < 0.1 and abs(sd - 0.5) < 0.08
    beta = _draws({"distribution": "beta", "a": 2.0, "b": 5.0}, n=600)
    assert all(0 <= v <= 1 for v in beta) and abs(sum(beta) / len(beta) - 2 / 7) < 0.03
    constant = _draws({"value": "gru"}, n=5)
    assert constant == ["gru"] * 5
    lists = _draws({"values": [[1, 2], [3]]}, n=20)
    assert {tuple(v) for v in lists} == {(1, 2), (3,)}


def test_methods_and_early_termination_map_to_samplers_and_pruners(tmp_path: Path) -> None:
    grid = load_sweep(
        _write(
            tmp_path,
            {"model.cell": {"values": ["lstm", "gru"]}, "model.num_layers": {"values": [1, 2]}},
            "grid",
        )
    )
    assert isinstance(make_sampler(grid, 0), optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=make_sampler(grid, 0))
    seen = set()
    for _ in range(4):
        trial = study.ask()
        seen.add(tuple(suggest(trial, p) for p in grid.parameters))
        study.tell(trial, 1.0)
    assert seen == {("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)}
    bayes = load_sweep(_write(tmp_path, {"model.dropout": {"min": 0.0, "max": 0.5}}, "bayes"))
    assert isinstance(make_sampler(bayes, 0), optuna.samplers.TPESampler)
    assert isinstance(make_pruner(bayes), optuna.pruners.NopPruner)
    rand = load_sweep(
        _write(
            tmp_path,
            {"model.dropout": {"min": 0.0, "max": 0.5}},
            early_terminate={"type": "hyperband", "min_iter": 3, "eta": 2},
        )
    )
    assert isinstance(make_sampler(rand, 0), optuna.samplers.RandomSampler)
    pruner = make_pruner(rand)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert pruner._min_resource == 3 and pruner._reduction_factor == 2


def test_online_sweep_carries_the_overrides_into_every_trial() -> None:
    spec = load_sweep("pianoroll_rnn")
    extra = ["data=essen", "trainer.max_epochs=5"]
    config = online_config(spec, extra)
    command = config["command"]
    assert command[-1] == ARGS_MACRO
    assert command.index("data=essen") < command.index(ARGS_MACRO)
    assert "logger.wandb.offline=false" in command
    assert config["parameters"] == spec.raw["parameters"] and config["method"] == spec.method
    assert spec.raw["command"][-1] == ARGS_MACRO  # the file's own config is untouched
    assert wants_online(["logger.wandb.offline=false"]) and wants_online(["logger.wandb.offline=False"])
    assert not wants_online(["logger.wandb.offline=true"]) and not wants_online([])
    offline = trial_command(spec, ["model.cell=gru"], ["data=essen"])
    assert offline[0] == sys.executable and offline[1:3] == ["-m", "muselab.train"]
    assert offline[-2:] == ["data=essen", "model.cell=gru"] and "${env}" not in offline


@pytest.mark.slow
def test_offline_sweep_runs_two_trials_that_make_compare_shows(tmp_path: Path, cache_dir: Path) -> None:
    """`make sweep` offline: 2 real training runs driven by Optuna, each a run directory that
    reported every epoch, both in the `make compare` table."""
    runs = tmp_path / "runs"
    overrides = [
        f"paths.cache_dir={cache_dir}",
        "data.source.limit=16",
        "data.batch_size=8",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "n_samples=0",
        "test=false",
        "callbacks.progress_bar=null",
        "callbacks.sample_music.n_samples=1",
        "callbacks.sample_music.length=16",
        "+callbacks.sample_music.n_real=4",
        "callbacks.sample_music.audio_backend=numpy",
        "torch_threads=1",
        f"hydra.run.dir={runs}/${{now:%H-%M-%S}}-${{muselab_pid:}}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "muselab.sweep",
            "pianoroll_rnn",
            "--trials",
            "2",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "study"),
            *overrides,
        ],
        cwd=Path(CONF_DIR).parent,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = json.loads((tmp_path / "study" / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    run_dirs = [Path(t["run_dir"]) for t in trials]
    assert len(set(run_dirs)) == 2 and all(d.parent == runs for d in run_dirs)
    for trial, run_dir in zip(trials, run_dirs):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert trial["value"] == pytest.approx(summary["best/val/loss"])
        assert json.loads((run_dir / "sweep_trial.json").read_text())["trial"] == trial["number"]
    assert trials[0]["params"] != trials[1]["params"]

    from muselab.compare import compare

    index = compare([runs], tmp_path / "page")
    page = index.read_text()
    assert "pianoroll_rnn #0" in page and "pianoroll_rnn #1" in page
    assert page.count("<tr>") == 2 + 1
