"""MLflow for sweeps: one parent run per sweep, one nested child run per trial, on the driver.

Why our own Tune callback rather than Ray's ``MLflowLoggerCallback``: that callback also runs on
the driver, but it creates one top-level run per trial; it has no notion of a parent, and the
parent is what ties a sweep's trials together in the MLflow UI (docs/metrics.md). This callback goes
through :class:`scalable_xmr.tracking.tracker.Tracker` (so a tracking failure only warns and never stops
the sweep), logs each trial's configuration as params, every reported epoch as metrics with
``step = training_iteration``, and ends the child run FINISHED / FAILED with the trial.

The trial -> MLflow run map is kept in ``<sweep>/mlflow_runs.json``: Tune pickles callbacks into
``tuner.pkl`` when the sweep starts, so after ``Tuner.restore`` this object comes back in its
first state; the file lets a resumed sweep continue the children it already has instead of
opening duplicates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray import tune

from scalable_xmr.io import atomic_write_json, read_json
from scalable_xmr.tracking.tracker import Tracker

RUNS_FILE = "mlflow_runs.json"

# Tune result key -> MLflow metric name (docs/metrics.md names; MLflow refuses '@' in names).
METRIC_NAMES = {
    "loss_train": "loss/train", "loss_recon": "loss/recon", "loss_label": "loss/label",
    "val_label_loss": "loss/val_label", "best_val_label_loss": "loss/val_label_best",
    "val_anchor_map": "map/val_anchor", "best_anchor_map": "map/val_anchor_best",
    "loss": "loss/train", "rsum": "rsum", "best_rsum": "rsum_best", "rsum_rerank": "rsum_rerank",
    "best_k": "rerank/k_i2t", "best_k_t2i": "rerank/k_t2i", "best_k_text": "rerank/k_text",
    "tt_r1": "recall/tt_r1",
}
_SKIP = {"training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
         "iterations_since_restore", "pid", "done", "epoch"}


def mlflow_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a Tune result under their MLflow names.

    Trials select on validation only and report no test figure; a ``test*`` key, should one ever
    appear, is still kept out of MLflow (the sweep's one test score is on its parent run).
    """
    out = {}
    for key, value in result.items():
        if key in _SKIP or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key.startswith("test"):
            continue
        if not math.isfinite(value):
            continue
        name = METRIC_NAMES.get(key)
        if name is None:
            name = f"recall/{key}" if key.startswith(("i2t_", "t2i_")) else key
        out[name] = float(value)
    return out


class SweepTracking(tune.Callback):
    """Tune callback: a child MLflow run per trial under the sweep's parent run."""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str | None,
                 sweep_dir: str, fixed_params: dict[str, Any] | None = None, enabled: bool = True):
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.parent_run_id, self.sweep_dir = parent_run_id, sweep_dir
        self.fixed_params = dict(fixed_params or {})
        self.enabled = enabled and parent_run_id is not None
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The MLflow client does not pickle; tuner.pkl keeps the settings only.
        return {**self.__dict__, "_tracker": None, "_runs": None}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, self.experiment, self.enabled)
        return self._tracker

    @property
    def runs(self) -> dict[str, str]:
        if self._runs is None:
            path = Path(self.sweep_dir) / RUNS_FILE
            self._runs = dict(read_json(path)) if path.is_file() else {}
        return self._runs

    def _run_for(self, trial) -> str | None:
        run = self.runs.get(trial.trial_id)
        if run is None and self.enabled:
            group = trial.config.get("modality")
            name = f"{trial.trial_id}" + (f" {group}" if group else "")
            tags = {"trial_id": trial.trial_id, "sweep": Path(self.sweep_dir).name}
            run = self.tracker.start_run(name, parent_id=self.parent_run_id, tags=tags)
            if run is not None:
                params = {**self.fixed_params, **trial.config, "trial_id": trial.trial_id}
                self.tracker.log_params(run, params)
                self.runs[trial.trial_id] = run
                atomic_write_json(Path(self.sweep_dir) / RUNS_FILE, self.runs)
        return run

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run_for(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run = self._run_for(trial)
        if run is not None:
            step = int(result.get("training_iteration", 0))
            self.tracker.log_metrics(run, mlflow_metrics(result), step=step)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run_for(trial)
        if run is not None:
            last = trial.last_result or {}
            final = {f"final/{k}": v for k, v in mlflow_metrics(last).items()}
            final["final/epochs"] = float(last.get("training_iteration", 0))
            self.tracker.log_metrics(run, final)
            self.tracker.end_run(run, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.tracker.end_run(self._run_for(trial), "FAILED")
