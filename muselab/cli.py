"""Argument handling shared by ``make train``, ``make sample`` and ``make evaluate``.

Every command reads ``key=value`` arguments with Hydra's override grammar against a YAML file in
``conf/`` (``train.yaml``, ``sample.yaml``, ``evaluate.yaml``), which states each default once:

- an unknown key fails at start-up and names the key; a value of the wrong type names the key and
  the type it expects (`check_override_types`);
- values are taken as users type them: ``~/midi`` and ``$HOME/midi`` are expanded, and a value the
  grammar cannot read (a ``~``, or a comma list where no sweep is meant) is passed as a string;
- in ``sample`` and ``evaluate``, a key that is not in the file is a sampling option
  (``top_k=8``, ``chords="C G Am F"``) and goes to the model's ``sample`` unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from muselab.errors import UserError

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
_ENV_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class ConfigTypeError(UserError):
    """An override whose value has the wrong type for its key."""


def expand_path_value(value: str) -> str:
    """``~`` at the start and ``$NAME`` environment variables expanded; ``${...}`` interpolations and
    unknown variables are left alone."""
    if value.startswith("~"):
        value = os.path.expanduser(value)
    return _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def normalize_overrides(argv: Iterable[str], sweeps: bool = True) -> list[str]:
    """Overrides as users type them, made readable by Hydra's grammar.

    Values with ``~`` or ``$NAME`` are expanded; a value the grammar rejects, or (with ``sweeps``
    False) one it would read as a sweep, is quoted so that it stays one string.
    """
    parser = OverridesParser.create()
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.startswith(("-", "hydra/")):
            out.append(arg)
            continue
        if "${" not in value:
            value = expand_path_value(value)
        candidate = f"{key}={value}"
        try:
            override = parser.parse_override(candidate)
            if not sweeps and override.is_sweep_override():
                candidate = f"{key}={_quoted(value)}"
        except HydraException:
            candidate = f"{key}={_quoted(value)}"
        out.append(candidate)
    return out


def _type_name(value: object) -> str:
    return type(value).__name__


def value_fits(default: object, value: object) -> bool:
    """Whether ``value`` may replace a key whose default is ``default``: the same type, an int for a
    float; anything where the default is null or a node, and null anywhere."""
    if default is None or value is None or isinstance(default, DictConfig | ListConfig):
        return True
    if isinstance(default, bool) != isinstance(value, bool):
        return False
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, int | str):
        return isinstance(value, type(default))
    return True


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
        if not value_fits(default, value):
            raise ConfigTypeError(
                f"config key '{key}' expects {_type_name(default)} (default {default!r}), got "
                f"{_type_name(value)} {value!r} from override '{override}'"
            )


def compose_command(config_name: str, argv: Iterable[str], options_key: str | None = "options") -> DictConfig:
    """``conf/<config_name>.yaml`` with ``key=value`` arguments applied, checked as `make train` checks.

    A key whose first part is not in the file becomes ``<options_key>.<key>`` (when given).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        base = compose(config_name=config_name)
        overrides = []
        for arg in normalize_overrides(argv, sweeps=False):
            key, sep, value = arg.partition("=")
            if not sep:
                raise UserError(f"expected key=value, got {arg!r}")
            # keys(): `in` on a DictConfig is False for a mandatory (???) value such as ckpt.
            if options_key and key.lstrip("+~").split(".")[0] not in base.keys():  # noqa: SIM118
                arg = f"+{options_key}.{key.lstrip('+')}={value}"
            overrides.append(arg)
        try:
            cfg = compose(config_name=config_name, overrides=overrides)
        except ConfigCompositionException as err:
            raise UserError(str(err.__cause__ or err).splitlines()[0]) from None
    check_override_types(base, [o for o in overrides if not o.startswith("+")], cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be given ({' '.join(f'{k}=...' for k in missing)})")
    return cfg


def command_arguments(config_name: str, argv: Iterable[str]) -> dict[str, object]:
    """`compose_command` as plain keyword arguments for the command's function."""
    return OmegaConf.to_container(compose_command(config_name, argv), resolve=True)


def parse_kv_args(argv: list[str], defaults: dict[str, object]) -> dict[str, object]:
    """Parse a benchmark's ``key=value`` arguments against ``defaults`` (types follow the defaults;
    an unknown key fails and lists the known ones)."""
    out = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"expected key=value, got {arg!r}")
        if key not in defaults:
            raise UserError(f"unknown argument {key!r}; known: {', '.join(sorted(defaults))}")
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
