"""Run directories: find the run a checkpoint belongs to, read its saved config, and resume it.

A run directory (``outputs/<model>-<data>/<time>-<pid>/``) holds ``.hydra/config.yaml``, the
checkpoints, the samples and the W&B run. Resuming from one of its checkpoints continues in the same
directory and the same W&B run, and refuses a model or data setting that differs from the run's
(it would otherwise be recorded in the config but silently replaced by the checkpoint's).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from muselab.cli import expand_path_value
from muselab.errors import UserError

log = logging.getLogger(__name__)

HYDRA_INTERPOLATION = re.compile(r"\$\{hydra:([^}]+)\}")
# Settings that may change when a run resumes: where and how fast data is read, not what it is.
RESUMABLE_CHANGES = ("data.num_workers", "data.n_jobs", "data.cache_dir")
_WANDB_RUN = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(\w+)$")


def find_run_dir(ckpt: str | Path) -> Path | None:
    """The run directory of a checkpoint: the nearest parent holding ``.hydra/config.yaml``."""
    for parent in Path(ckpt).resolve().parents:
        if (parent / ".hydra" / "config.yaml").is_file():
            return parent
    return None


def load_run_config(run_dir: str | Path) -> DictConfig:
    """A run's saved Hydra config with every interpolation resolvable outside a Hydra app.

    Hydra saves ``config.yaml`` unresolved: ``${hydra:runtime.choices.data}``,
    ``${hydra:runtime.cwd}`` and ``${hydra:runtime.output_dir}`` only resolve inside the app that
    wrote them. They are replaced by their values from ``hydra.yaml`` (saved beside it), without
    touching Hydra's global state; ``paths.output_dir`` becomes the run directory where it is now
    (it may have been moved), and a missing ``hydra.yaml`` falls back to the current directory.
    """
    run_dir = Path(run_dir).resolve()
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    hydra_cfg = OmegaConf.load(hydra_file).get("hydra", {}) if hydra_file.is_file() else OmegaConf.create()
    fallbacks = {"runtime.cwd": str(Path.cwd()), "runtime.output_dir": str(run_dir)}

    def hydra_value(match: re.Match) -> str:
        key = match.group(1).strip()
        if key == "runtime.output_dir":
            return str(run_dir)
        value = OmegaConf.select(hydra_cfg, key, default=None)
        if value is None:
            value = fallbacks.get(key, "unknown")
        return str(value)

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: substitute(v) for k, v in node.items()}
        if isinstance(node, list):
            return [substitute(v) for v in node]
        if isinstance(node, str) and "${hydra:" in node:
            return HYDRA_INTERPOLATION.sub(hydra_value, node)
        return node

    container = substitute(OmegaConf.to_container(cfg, resolve=False))
    container.pop("hydra", None)
    return OmegaConf.create(container)


def wandb_run_id(run_dir: str | Path) -> str | None:
    """The id of the W&B run logged in ``run_dir`` (the newest, if it was resumed before)."""
    runs = sorted((Path(run_dir) / "wandb").glob("*run-*"), key=lambda p: p.name.split("-", 2)[-1])
    ids = [m.group(1) for p in runs if p.is_dir() and (m := _WANDB_RUN.match(p.name))]
    return ids[-1] if ids else None


def resume_overrides(argv: list[str]) -> list[str]:
    """``argv`` plus what makes a resumed run continue its own directory.

    With ``ckpt_path=<checkpoint inside a run directory>`` and no ``hydra.run.dir``, the run
    directory is that of the checkpoint; this run's Hydra files go to ``.hydra/resumed-<time>`` so
    the run's original config stays where `make evaluate` reads it.
    """
    values = dict(arg.split("=", 1) for arg in argv if "=" in arg and not arg.startswith("-"))
    ckpt = values.get("ckpt_path", "").strip("'\"")
    if not ckpt or ckpt in ("null", "None") or "hydra.run.dir" in values:
        return argv
    run_dir = find_run_dir(expand_path_value(ckpt))
    if run_dir is None:
        return argv
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return [*argv, f"hydra.run.dir={run_dir}", f"hydra.output_subdir=.hydra/resumed-{stamp}"]


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def changed_settings(
    saved: DictConfig, now: DictConfig, groups: tuple[str, ...] = ("model", "data")
) -> list[str]:
    """``key: saved -> now`` for each setting of ``groups`` that differs between two run configs
    (both resolved), except `RESUMABLE_CHANGES`."""
    lines = []
    for group in groups:
        before = _flat(OmegaConf.to_container(saved[group], resolve=True), group) if group in saved else {}
        after = _flat(OmegaConf.to_container(now[group], resolve=True), group) if group in now else {}
        for key in sorted(set(before) | set(after)):
            if key.startswith(RESUMABLE_CHANGES) or before.get(key) == after.get(key):
                continue
            lines.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return lines


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings a resume must keep (``model`` and ``data``, resolved) as plain containers. Every
    checkpoint stores them, so a checkpoint moved out of its run directory is still checked."""
    return {
        group: OmegaConf.to_container(cfg[group], resolve=True) for group in ("model", "data") if group in cfg
    }


def check_resume(
    ckpt_path: str | Path, cfg: DictConfig, checkpoint: Mapping[str, Any] | None = None
) -> Path | None:
    """Refuse to resume with model or data settings other than the run's; returns its run directory
    (None for a checkpoint outside one).

    Those settings are restored from the checkpoint (weights, optimiser state, the learning rate
    in it): a different value on the command line would be recorded in the config and W&B while the
    run kept the old one. They are compared with the run directory's ``.hydra/config.yaml``, or, for
    a checkpoint outside its run directory, with the settings recorded in the checkpoint.
    """
    run_dir = find_run_dir(ckpt_path)
    if run_dir is not None:
        saved, where = load_run_config(run_dir), "its .hydra/config.yaml"
    elif checkpoint is not None and checkpoint.get("muselab_run_settings"):
        saved, where = OmegaConf.create(checkpoint["muselab_run_settings"]), "the settings recorded in it"
    else:
        log.warning(
            "ckpt_path=%s is outside a run directory and records no run settings: the model and data "
            "settings given now are not checked against the ones it was trained with",
            ckpt_path,
        )
        return None
    changes = changed_settings(saved, cfg)
    if changes:
        raise UserError(
            f"ckpt_path={ckpt_path}: resuming keeps the run's model and data settings, but these differ "
            f"from {where}: {'; '.join(changes)}. Drop those overrides, or start a new run "
            "(without ckpt_path) to change them."
        )
    return run_dir
