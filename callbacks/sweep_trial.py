"""`SweepTrialReport`: a training run that is one trial of an offline sweep (`muselab.sweep`).

After every validated epoch, rank 0 reports the sweep's metric to the trial's Optuna study and asks
the study's pruner (the sweep file's ``early_terminate``) whether to stop; the decision is broadcast,
so every DDP rank stops at the same epoch. The run directory goes into the trial's attributes (so
`muselab.sweep` can list it) and ``sweep_trial.json`` in the run directory says which sweep and
trial the run was (so `make compare` can show it).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class SweepTrialReport(Callback):
    """Report a sweep trial's metric to its Optuna study every validated epoch; stop when pruned.

    Args:
        journal: the study's Optuna journal file.
        study_name: the study.
        trial_id: the Optuna trial id `muselab.sweep` asked for.
        metric: the sweep's metric (``val/loss``).
        goal: ``minimize`` or ``maximize``.
        sweep_file: the sweep file (its ``early_terminate`` makes the pruner).
    """

    def __init__(
        self, journal: str, study_name: str, trial_id: int, metric: str, goal: str, sweep_file: str
    ) -> None:
        self.journal = journal
        self.study_name = study_name
        self.trial_id = int(trial_id)
        self.metric = metric
        self.goal = goal
        self.sweep_file = sweep_file
        self._trial: Any = None
        self._validated_epoch: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_trial"] = None  # reopened from the journal where it is needed
        return state

    def trial(self) -> Any:
        if self._trial is None:
            from muselab.sweep import load_trial

            self._trial = load_trial(self.journal, self.study_name, self.trial_id, self.sweep_file)
        return self._trial

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        trial = self.trial()
        run_dir = str(Path(trainer.default_root_dir).resolve())
        trial.set_user_attr("run_dir", run_dir)
        info = {
            "sweep": Path(self.sweep_file).stem,
            "study": self.study_name,
            "trial": trial.number,
            "params": trial.params,
            "metric": self.metric,
        }
        (Path(run_dir) / "sweep_trial.json").write_text(json.dumps(info, indent=2, default=str))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here (after validation and `SampleMusic`) the epoch's val/, sample/ and overfit/ are final.
        epoch = trainer.current_epoch
        if self._validated_epoch != epoch:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.metric)
            if value is None:
                raise KeyError(
                    f"the sweep's metric {self.metric} was not logged (logged: "
                    f"{', '.join(sorted(trainer.callback_metrics))})"
                )
            value = float(value)
            trial = self.trial()
            if math.isfinite(value):
                trial.report(value, step=epoch + 1)  # W&B counts iterations from 1
                prune = trial.should_prune()
            if prune:
                trial.set_user_attr("pruned_at_epoch", epoch)
                log.info(
                    "Sweep trial %d pruned after epoch %d (%s=%.4f)", trial.number, epoch, self.metric, value
                )
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            trainer.should_stop = True
