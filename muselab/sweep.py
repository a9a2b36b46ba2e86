"""Hyperparameter sweeps from W&B sweep files: on W&B when it is online, with Optuna when not.

``make sweep SWEEP=<file> [TRIALS=N] [key=value ...]`` = ``python -m muselab.sweep <file> --trials N
key=value ...``. A sweep file (``conf/sweep/<model>.yaml``) is in W&B's own format: ``method``,
``metric``, ``parameters`` (W&B's distributions), ``early_terminate`` and a ``command`` that runs
``python -m muselab.train model=<model> ... ${args_no_hyphens}``, so each trial is a normal training
run, with its own run directory, given the sampled values as Hydra ``key=value`` overrides. A
parameter named ``+key`` adds a key the config does not have.

- **Online** (``logger.wandb.offline=false`` among the overrides and the W&B API reachable): the
  sweep is created on W&B (the overrides put into its command, so they reach every trial) and a W&B
  agent runs ``TRIALS`` trials here.
- **Offline** (otherwise): the same file drives an Optuna study. ``bayes`` maps to Optuna's TPE
  sampler, ``random`` to its random sampler and ``grid`` to its grid sampler; every W&B distribution
  maps to an Optuna one (the normal and beta families through their quantile, so the samplers search
  a uniform quantile and the values follow the W&B prior); ``early_terminate: hyperband`` maps to
  Optuna's Hyperband pruner. Each trial reports the sweep's metric after every validated epoch
  (`callbacks.sweep_trial.SweepTrialReport`) and stops when pruned; its value is the best the metric
  reached (the run summary's ``best/<metric>``). The study lives in
  ``outputs/sweeps/<name>/optuna.journal``: running the same sweep again continues it.

`check_sweep` validates a file against the model it names: every parameter is a config key (``+``
ones are new keys under an existing node), every value has the key's type as Hydra reads it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from omegaconf import DictConfig, OmegaConf

from muselab.cli import CONFIG_DIR, normalize_overrides, value_fits
from muselab.errors import UserError, report_user_errors

log = logging.getLogger("muselab.sweep")

SWEEP_DIR = Path(CONFIG_DIR) / "sweep"
REPO_ROOT = Path(CONFIG_DIR).parent
METHODS = ("bayes", "random", "grid")
# W&B's distributions (https://docs.wandb.ai, "sweep configuration options").
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
)
ARGS_MACRO = "${args_no_hyphens}"
# Metrics a run logs once per validated epoch, which a trial can report and a pruner compare.
EPOCH_METRIC_PREFIXES = ("val/", "best/", "sample/", "overfit/")
OFFLINE_OVERRIDE = "logger.wandb.offline=false"


class SweepError(UserError):
    """A sweep file that cannot run: the message names the file and the parameter or key."""


@dataclass
class Parameter:
    """One swept parameter: ``name`` as written (``+key`` adds a key), its W&B ``spec``."""

    name: str
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return self.name.lstrip("+")

    @property
    def adds_key(self) -> bool:
        return self.name.startswith("+") and not self.name.startswith("++")

    @property
    def distribution(self) -> str:
        """The W&B distribution, inferred as W&B infers it when the file does not say."""
        spec = self.spec
        if "distribution" in spec:
            return str(spec["distribution"])
        if "value" in spec:
            return "constant"
        if "values" in spec:
            return "categorical"
        if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int):
            return "int_uniform"
        return "uniform"


@dataclass
class SweepSpec:
    """A parsed W&B sweep file."""

    path: Path
    raw: dict[str, Any]
    name: str
    method: str
    metric: str
    goal: str
    parameters: list[Parameter]
    command: list[str]
    early_terminate: dict[str, Any] | None = None
    run_cap: int | None = None
    command_overrides: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        """The model the sweep trains (its command's ``model=`` override)."""
        for override in self.command_overrides:
            key, _, value = override.partition("=")
            if key == "model":
                return value
        raise SweepError(f"{self.path}: the command names no model (add model=<name> to it)")

    @property
    def direction(self) -> str:
        return "minimize" if self.goal == "minimize" else "maximize"


def resolve_sweep_path(name: str | Path) -> Path:
    """``pianoroll_rnn``, ``pianoroll_rnn.yaml`` (in conf/sweep/) or a path to a sweep file."""
    path = Path(os.path.expanduser(str(name)))
    candidates = [path, SWEEP_DIR / path, SWEEP_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    known = ", ".join(sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")))
    raise SweepError(f"SWEEP={name}: no such sweep file (conf/sweep/ has: {known})")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and structurally check a W&B sweep file (`check_sweep` checks it against the config)."""
    path = resolve_sweep_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (method, metric, parameters, command)")
    method = raw.get("method")
    if method not in METHODS:
        raise SweepError(f"{path}: method={method!r}: must be one of {', '.join(METHODS)}")
    metric = raw.get("metric") or {}
    if not isinstance(metric, dict) or not metric.get("name"):
        raise SweepError(f"{path}: metric.name is missing (the metric to optimise, e.g. val/loss)")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise SweepError(f"{path}: metric.goal={goal!r}: must be minimize or maximize")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: parameters is missing or empty")
    params = []
    for name, spec in parameters.items():
        if not isinstance(spec, dict):
            raise SweepError(f"{path}: parameter {name}: must be a mapping (values:, value:, min:/max:, ...)")
        if "parameters" in spec:
            raise SweepError(
                f"{path}: parameter {name}: nested parameters are not supported; use dotted keys"
            )
        param = Parameter(str(name), spec)
        _check_parameter_shape(path, param)
        params.append(param)
    command = raw.get("command")
    if not isinstance(command, list) or ARGS_MACRO not in command:
        raise SweepError(f"{path}: command must be a list that ends with {ARGS_MACRO} (Hydra key=value)")
    command = [str(c) for c in command]
    if "muselab.train" not in command and not any(c.endswith("muselab/train.py") for c in command):
        raise SweepError(f"{path}: command must run the train entry point (python -m muselab.train)")
    overrides = [c for c in command if "=" in c and not c.startswith(("-", "$"))]
    early = raw.get("early_terminate")
    if early is not None and (not isinstance(early, dict) or early.get("type") != "hyperband"):
        raise SweepError(f"{path}: early_terminate.type must be hyperband (the one W&B has)")
    run_cap = raw.get("run_cap")
    if method == "grid":
        continuous = [p.name for p in params if p.distribution not in ("constant", "categorical")]
        if continuous:
            raise SweepError(
                f"{path}: method=grid needs values: or value: for every parameter, not a distribution "
                f"({', '.join(continuous)})"
            )
    return SweepSpec(
        path=path,
        raw=raw,
        name=str(raw.get("name") or path.stem),
        method=method,
        metric=str(metric["name"]),
        goal=goal,
        parameters=params,
        command=command,
        early_terminate=early,
        run_cap=int(run_cap) if run_cap else None,
        command_overrides=overrides,
    )


def _check_parameter_shape(path: Path, param: Parameter) -> None:
    spec, kind = param.spec, param.distribution
    where = f"{path}: parameter {param.name}"
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"{where}: distribution {kind!r} is not one of W&B's ({', '.join(DISTRIBUTIONS)})")
    if kind == "constant" and "value" not in spec:
        raise SweepError(f"{where}: a constant needs value:")
    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: values: must be a non-empty list")
        if any(v is None for v in values):
            raise SweepError(f"{where}: a value of None reaches Hydra as the string 'None': write 'null'")
    needs = {
        "normal": ("mu", "sigma"),
        "q_normal": ("mu", "sigma"),
        "log_normal": ("mu", "sigma"),
        "q_log_normal": ("mu", "sigma"),
        "beta": ("a", "b"),
        "q_beta": ("a", "b"),
    }.get(kind, ("min", "max") if kind not in ("constant", "categorical") else ())
    defaults = {"mu": 0.0, "sigma": 1.0}
    missing = [k for k in needs if k not in spec and k not in defaults]
    if missing:
        raise SweepError(f"{where}: {kind} needs {' and '.join(f'{k}:' for k in missing)}")
    if "min" in needs and not spec["min"] < spec["max"]:
        raise SweepError(f"{where}: min ({spec['min']}) must be below max ({spec['max']})")
    if kind in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values") and spec["min"] <= 0:
        raise SweepError(f"{where}: {kind} needs min > 0")


# ------------------------------------------------------------------------------------ validation
def format_value(value: Any) -> str:
    """A value as W&B's agent writes it into ``${args_no_hyphens}`` (``str``), which Hydra then parses."""
    return f"{value}"


def hydra_value(key: str, value: Any) -> Any:
    """What Hydra reads from ``key=<value as W&B writes it>`` (int, float, bool, str, list, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={format_value(value)}")
    return override.value()


def representative_values(param: Parameter) -> list[Any]:
    """Values of the types a parameter's distribution yields: each categorical value, a constant, the
    bounds of a range (an int for int_uniform, a float for every other distribution)."""
    spec, kind = param.spec, param.distribution
    if kind == "constant":
        return [spec["value"]]
    if kind == "categorical":
        return list(spec["values"])
    if kind == "int_uniform":
        return [int(spec["min"]), int(spec["max"])]
    if "min" in spec:
        return [float(spec["min"]), float(spec["max"])]
    return [0.5]


def compose_sweep_config(spec: SweepSpec, extra: list[str] = ()) -> DictConfig:
    """The train config of a sweep's command (and ``extra`` overrides), as its trials start from."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    overrides = normalize_overrides([*spec.command_overrides, *extra])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        # ${hydra:runtime.choices.data} (an event representation's genre) resolves, as in a run
        HydraConfig.instance().set_config(cfg)
        return cfg
    except HydraException as err:
        raise SweepError(f"{spec.path}: its command does not compose: {str(err).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()


def check_sweep(spec: SweepSpec, extra: list[str] = ()) -> DictConfig:
    """Check every parameter against the config of the model the sweep names; returns that config.

    A parameter must be a key of that config (``+key``: a new key under an existing node); each of
    its values, as W&B writes it and Hydra reads it, must have the key's type (`value_fits`).
    """
    cfg = compose_sweep_config(spec, extra)
    where = f"{spec.path}"
    if not any(spec.metric.startswith(p) for p in EPOCH_METRIC_PREFIXES):
        raise SweepError(
            f"{where}: metric.name={spec.metric}: must be logged every validated epoch "
            f"({', '.join(p + '...' for p in EPOCH_METRIC_PREFIXES)}; the model's monitor is "
            f"{cfg.model.get('monitor', 'val/loss')})"
        )
    for param in spec.parameters:
        key = param.key
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
        exists = isinstance(node, DictConfig) and leaf in node
        if param.adds_key:
            if not isinstance(node, DictConfig):
                raise SweepError(f"{where}: parameter {param.name}: {parent or 'the config'} is not a node")
            if exists:
                raise SweepError(
                    f"{where}: parameter {param.name}: {key} already exists; name it without '+'"
                )
            continue
        if not exists:
            raise SweepError(
                f"{where}: parameter {param.name}: not a key of the {spec.model} config "
                f"(a new key is added with '+{key}')"
            )
        try:
            default = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # an interpolation that needs the Hydra runtime: nothing to compare to
            continue
        for value in representative_values(param):
            try:
                typed = hydra_value(key, value)
            except Exception as err:
                raise SweepError(
                    f"{where}: parameter {param.name}: Hydra cannot read {key}={format_value(value)} ({err})"
                ) from None
            if not value_fits(default, typed):
                raise SweepError(
                    f"{where}: parameter {param.name}: expects {type(default).__name__} (default "
                    f"{default!r}), but {param.distribution} gives {type(typed).__name__} "
                    f"{format_value(value)}"
                    + (" (use int_uniform or values: for an int key)" if isinstance(default, int) else "")
                )
    return cfg


# ------------------------------------------------------------------------------------ Optuna
def _choices(param: Parameter) -> list[Any]:
    """Categorical choices as Optuna takes them (None, bool, int, float, str; others as JSON)."""
    values = [param.spec["value"]] if param.distribution == "constant" else list(param.spec["values"])
    return [v if isinstance(v, bool | int | float | str) else json.dumps(v) for v in values]


def _unchoice(param: Parameter, choice: Any) -> Any:
    values = [param.spec["value"]] if param.distribution == "constant" else list(param.spec["values"])
    for value in values:
        if value == choice or (
            not isinstance(value, bool | int | float | str) and json.dumps(value) == choice
        ):
            return value
    return choice


def _quantize(value: float, q: float | None) -> float:
    return round(value / q) * q if q else value


def suggest(trial: Any, param: Parameter) -> Any:
    """Draw one parameter's value for an Optuna ``trial``, as the W&B distribution would."""
    from scipy import stats

    spec, kind, name = param.spec, param.distribution, param.name
    q = spec.get("q")
    if kind in ("constant", "categorical"):
        return _unchoice(param, trial.suggest_categorical(name, _choices(param)))
    if kind == "int_uniform":
        return trial.suggest_int(name, int(spec["min"]), int(spec["max"]))
    low, high = spec.get("min"), spec.get("max")
    if kind in ("uniform", "q_uniform"):
        return _quantize(
            trial.suggest_float(name, float(low), float(high)), q if kind == "q_uniform" else None
        )
    if kind in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
        value = trial.suggest_float(name, float(low), float(high), log=True)
        return _quantize(value, q if kind.startswith("q_") else None)
    if kind in ("log_uniform", "q_log_uniform"):  # min/max are natural logs of the value
        value = trial.suggest_float(name, math.exp(low), math.exp(high), log=True)
        return _quantize(value, q if kind.startswith("q_") else None)
    if kind == "inv_log_uniform":  # min/max are natural logs of 1 / value
        return trial.suggest_float(name, math.exp(-high), math.exp(-low), log=True)
    # The normal and beta families: search a uniform quantile, map it through the inverse CDF.
    u = trial.suggest_float(f"{name}~quantile", 1e-6, 1 - 1e-6)
    if kind in ("beta", "q_beta"):
        value = float(stats.beta.ppf(u, spec["a"], spec["b"]))
    else:
        value = float(stats.norm.ppf(u, spec.get("mu", 0.0), spec.get("sigma", 1.0)))
        if kind in ("log_normal", "q_log_normal"):
            value = math.exp(value)
    return _quantize(value, q if kind.startswith("q_") else None)


def make_sampler(spec: SweepSpec, seed: int | None) -> Any:
    """W&B ``bayes`` -> TPE (Optuna's Bayesian sampler), ``random`` -> random, ``grid`` -> grid."""

    if spec.method == "grid":
        return _AskTellGridSampler({p.name: _choices(p) for p in spec.parameters}, seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` after the last point, which works only
    inside ``study.optimize``: `run_offline` asks and tells, and checks `is_exhausted` itself."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_pruner(spec: SweepSpec) -> Any:
    """W&B's hyperband early termination -> Optuna's Hyperband pruner; none -> no pruning.

    W&B counts iterations as the times the metric was logged (once per validated epoch here), with
    brackets from ``min_iter`` (or ``max_iter`` / eta**s) growing by ``eta`` (3): the same as the
    pruner's ``min_resource`` and ``reduction_factor`` with trials reporting at epoch 1, 2, ...
    """

    early = spec.early_terminate
    if not early:
        return optuna.pruners.NopPruner()
    eta = int(early.get("eta", 3))
    max_iter = early.get("max_iter")
    min_iter = early.get("min_iter")
    if min_iter is None and max_iter is not None:
        min_iter = max(1, int(max_iter) // eta ** int(early.get("s", 0)))
    return optuna.pruners.HyperbandPruner(
        min_resource=int(min_iter or 1),
        max_resource=int(max_iter) if max_iter else "auto",
        reduction_factor=eta,
    )


def _storage(journal: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def load_trial(journal: str | Path, study_name: str, trial_id: int, sweep_file: str | Path) -> Any:
    """The running Optuna trial ``trial_id`` of a study, with the sweep's pruner (for a trial process)."""

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_sweep(sweep_file)
    study = optuna.load_study(
        study_name=study_name, storage=_storage(Path(journal)), pruner=make_pruner(spec)
    )
    return optuna.trial.Trial(study, trial_id)


# ------------------------------------------------------------------------------------ commands
def trial_command(spec: SweepSpec, args: list[str], extra: list[str] = ()) -> list[str]:
    """The sweep's command as W&B's agent runs it: macros expanded, ``extra`` overrides before the
    sampled ``args`` (so a swept value wins), ``python`` as this interpreter."""
    out: list[str] = []
    for part in spec.command:
        if part == "${env}":
            continue  # /usr/bin/env: the environment is this process's
        if part in ("python", "python3", "${interpreter}"):
            out.append(sys.executable)
        elif part == "${program}":
            out.append(str(spec.raw.get("program", "muselab/train.py")))
        elif part == ARGS_MACRO:
            out += [*extra, *args]
        elif part.startswith("${"):
            raise SweepError(f"{spec.path}: command macro {part} is not supported offline (use {ARGS_MACRO})")
        else:
            out.append(os.path.expandvars(part))
    return out


def online_config(spec: SweepSpec, extra: list[str]) -> dict[str, Any]:
    """The sweep file as W&B receives it: ``extra`` overrides (and online logging) put into its
    command before ``${args_no_hyphens}``, so they reach every trial."""
    config = copy.deepcopy(spec.raw)
    command = [str(c) for c in config["command"]]
    index = command.index(ARGS_MACRO)
    added = [e for e in [*extra, OFFLINE_OVERRIDE] if e not in command]
    config["command"] = [*command[:index], *added, *command[index:]]
    config.setdefault("name", spec.name)
    return config


def wants_online(extra: list[str]) -> bool:
    """``logger.wandb.offline=false`` (or ``False``/``0``) among the overrides."""
    for override in extra:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "logger.wandb.offline" and value.strip().lower() in ("false", "0", "no"):
            return True
    return False


@dataclass
class TrialResult:
    """One offline trial: its number, values, state, value and run directory."""

    number: int
    params: dict[str, Any]
    state: str
    value: float | None
    run_dir: str | None
    seconds: float
    pruned_at: int | None = None


def study_name(spec: SweepSpec, extra: list[str]) -> str:
    """The study's name: the sweep's, and a hash of its file and the extra overrides, so that the
    same sweep continues its study and a changed one starts a new study."""
    blob = json.dumps({"sweep": spec.raw, "extra": list(extra)}, sort_keys=True, default=str)
    return f"{spec.name}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def run_offline(
    spec: SweepSpec,
    trials: int,
    extra: list[str] = (),
    out_dir: str | Path | None = None,
    seed: int | None = None,
    quiet: bool = False,
) -> list[TrialResult]:
    """Run ``trials`` trials of ``spec`` with Optuna, one training process each (see module docstring)."""
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir = Path(out_dir or REPO_ROOT / "outputs" / "sweeps" / spec.name)
    journal = out_dir / "optuna.journal"
    name = study_name(spec, list(extra))
    storage = _storage(journal)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=spec.direction,
        load_if_exists=True,
        pruner=make_pruner(spec),
    )
    done_before = len(study.trials)
    # A fresh seed per session of a study: a continued random search must not repeat its first trials.
    base = seed if seed is not None else int(hashlib.sha1(name.encode()).hexdigest()[:6], 16)
    study.sampler = make_sampler(spec, base + done_before)
    extra = [*extra, "logger.wandb.offline=true"]  # offline: even if the file's command says otherwise
    results: list[TrialResult] = []
    log.info("Sweep %s: %d offline trials (Optuna study %s in %s)", spec.name, trials, name, journal)
    for _ in range(trials):
        if spec.method == "grid" and _grid_done(study):
            log.info("Sweep %s: every grid point has run", spec.name)
            break
        trial = study.ask()
        values = {p.name: suggest(trial, p) for p in spec.parameters}
        args = [f"{name_}={format_value(v)}" for name_, v in values.items()]
        reporter = (
            "+callbacks.sweep_trial={_target_:callbacks.sweep_trial.SweepTrialReport,"
            f"journal:'{journal.resolve()}',study_name:'{name}',trial_id:{trial._trial_id},"
            f"metric:'{spec.metric}',goal:{spec.goal},sweep_file:'{spec.path}'}}"
        )
        command = trial_command(spec, args, [*extra, reporter])
        log.info("Trial %d: %s", trial.number, " ".join(args))
        start = time.perf_counter()
        try:
            code = subprocess.run(
                command,
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL if quiet else None,
                stderr=subprocess.PIPE if quiet else None,
                text=True,
            )
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            raise
        seconds = time.perf_counter() - start
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        reported = [v for v in frozen.intermediate_values.values() if math.isfinite(v)]
        pruned_at = frozen.user_attrs.get("pruned_at_epoch")
        if code.returncode != 0 or not reported:
            state, value = TrialState.FAIL, None
            detail = (code.stderr or "")[-1500:] if quiet else ""
            warnings.warn(
                f"trial {trial.number} failed (exit {code.returncode}, {len(reported)} epochs reported) {detail}",
                stacklevel=2,
            )
            study.tell(trial, state=state)
        elif pruned_at is not None:
            state, value = TrialState.PRUNED, reported[-1]
            study.tell(trial, state=state)
        else:
            state = TrialState.COMPLETE
            value = min(reported) if spec.goal == "minimize" else max(reported)
            study.tell(trial, value)
        results.append(
            TrialResult(
                trial.number,
                values,
                state.name.lower(),
                value,
                frozen.user_attrs.get("run_dir"),
                seconds,
                pruned_at,
            )
        )
        target = spec.raw.get("metric", {}).get("target")
        reached = value is not None and target is not None and state == TrialState.COMPLETE
        if reached and ((value <= target) if spec.goal == "minimize" else (value >= target)):
            log.info("Sweep %s: metric.target %s reached by trial %d", spec.name, target, trial.number)
            break
    _write_summary(out_dir, spec, name, study, done_before)
    return results


def _grid_done(study: Any) -> bool:
    sampler = study.sampler
    return hasattr(sampler, "is_exhausted") and sampler.is_exhausted(study)


def _write_summary(out_dir: Path, spec: SweepSpec, name: str, study: Any, done_before: int) -> None:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value if t.state.name == "COMPLETE" else None,
                "last_reported": list(t.intermediate_values.values())[-1] if t.intermediate_values else None,
                "params": t.params,
                "run_dir": t.user_attrs.get("run_dir"),
                "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
            }
        )
    summary = {
        "sweep": str(spec.path),
        "study": name,
        "metric": spec.metric,
        "goal": spec.goal,
        "trials": rows,
    }
    (out_dir / "trials.json").write_text(json.dumps(summary, indent=2, default=str))
    complete = [r for r in rows if r["value"] is not None]
    lines = [f"Sweep {spec.name} ({spec.method}, {spec.metric} {spec.goal}), study {name}:"]
    for r in rows[done_before:]:
        value = f"{r['value']:.4f}" if r["value"] is not None else r["state"]
        lines.append(f"  trial {r['number']:3d}  {value:>10}  {r['run_dir'] or '-'}")
    if complete:
        best = (min if spec.goal == "minimize" else max)(complete, key=lambda r: r["value"])
        lines.append(f"  best: trial {best['number']} {spec.metric}={best['value']:.4f} {best['params']}")
    lines.append(f"  all trials: {out_dir / 'trials.json'}; compare the runs with `make compare`")
    print("\n".join(lines), flush=True)


def run_online(spec: SweepSpec, trials: int | None, extra: list[str]) -> str:
    """Create the sweep on W&B and run an agent here for ``trials`` trials; returns the sweep id."""
    import wandb

    config = online_config(spec, extra)
    project, entity = config.get("project", "muselab"), config.get("entity")
    try:
        sweep_id = wandb.sweep(config, project=project, entity=entity)
    except Exception as err:  # no key, a rejected file: say so in one line
        raise SweepError(f"W&B refused the sweep {spec.path}: {err} (is WANDB_API_KEY set?)") from None
    # The agent runs `python` from PATH: make it this interpreter (the project's venv).
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.chdir(REPO_ROOT)
    wandb.agent(sweep_id, project=project, entity=entity, count=trials)
    return sweep_id


def default_trials(spec: SweepSpec) -> int:
    """The file's ``run_cap``, else every grid point, else 10."""
    if spec.run_cap:
        return spec.run_cap
    if spec.method == "grid":
        return math.prod(len(_choices(p)) for p in spec.parameters)
    return 10


def main(argv: list[str] | None = None) -> None:
    """``python -m muselab.sweep SWEEP [--trials N] [--seed S] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="muselab.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a file in conf/sweep/ (with or without .yaml) or a path")
    parser.add_argument(
        "--trials", type=int, default=None, help="trials to run (default: run_cap, grid size or 10)"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (offline)")
    parser.add_argument("--out", default=None, help="where the study goes (default: outputs/sweeps/<name>)")
    parser.add_argument("overrides", nargs="*", help="Hydra key=value overrides for every trial")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    with report_user_errors("muselab.sweep"):
        spec = load_sweep(args.sweep)
        extra = normalize_overrides(args.overrides)
        for override in extra:
            key, _, value = override.partition("=")
            if key == "model" and value != spec.model:
                raise SweepError(f"model={value}: {spec.path} sweeps model={spec.model}")
        check_sweep(spec, extra)
        if args.trials is not None and args.trials < 1:
            raise SweepError(f"TRIALS={args.trials}: must be at least 1")
        trials = args.trials or default_trials(spec)
        if wants_online(extra):
            from muselab.utils import wandb_reachable

            if wandb_reachable():
                run_online(spec, trials, extra)
                return
            warnings.warn(
                "W&B online was asked for but api.wandb.ai is unreachable: sweeping offline", stacklevel=1
            )
        results = run_offline(spec, trials, extra, out_dir=args.out, seed=args.seed)
        if results and all(r.state == "fail" for r in results):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
