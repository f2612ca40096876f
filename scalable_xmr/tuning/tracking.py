"""MLflow for sweeps: one parent run per sweep, one nested child run per trial, on the driver.

Why our own Tune callback rather than Ray's ``MLflowLoggerCallback``: that callback also runs on
the driver, but it creates one top-level run per trial; it has no notion of a parent, and the
parent is what ties a sweep's trials together in the MLflow UI (docs/metrics.md). This callback goes
through :class:`scalable_xmr.tracking.tracker.Tracker` (so a tracking failure only warns and never stops
the sweep), logs each trial's configuration as params, every reported epoch as metrics with
``step = training_iteration``, and ends the child run FINISHED / FAILED with the trial.

Per-epoch metrics are buffered and written every :data:`FLUSH_SECONDS` (one ``log_batch`` per run),
and at each trial's end: Tune holds a trial in ``tune.report`` until the driver has handled its
result, so one sqlite transaction per epoch per trial was a per-epoch cost of every trial.

A population trial (``--population N``, tuning/population_trial.py) gets one child run per slot,
named ``<trial_id>-m<i>``, with that slot's configuration and metrics: MLflow shows every
configuration as it does for single trials.

The trial -> MLflow run map is kept in ``<sweep>/mlflow_runs.json``: Tune pickles callbacks into
``tuner.pkl`` when the sweep starts, so after ``Tuner.restore`` this object comes back in its
first state; the file lets a resumed sweep continue the children it already has instead of
opening duplicates.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ray import tune

from scalable_xmr.io import atomic_write_json, read_json
from scalable_xmr.tracking.tracker import Tracker
from scalable_xmr.tuning.results import MEMBERS_KEY, slot_id, slot_metrics

RUNS_FILE = "mlflow_runs.json"
FLUSH_SECONDS = 5.0  # per-epoch metrics wait at most this long on the driver before MLflow has them

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
        self._pending: dict[str, list[tuple[str, float, int]]] = {}  # run -> unwritten metric rows
        self._flushed = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        # The MLflow client does not pickle; tuner.pkl keeps the settings only.
        return {**self.__dict__, "_tracker": None, "_runs": None, "_pending": {}}

    def _flush(self, runs: list[str] | None = None) -> None:
        """Write the buffered metric rows of ``runs`` (all when None), one batch per run."""
        for run in list(self._pending) if runs is None else runs:
            rows = self._pending.pop(run, None)
            if rows:
                self.tracker.log_metric_rows(run, rows)
        if runs is None:
            self._flushed = time.monotonic()

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

    def _start(self, key: str, group: Any, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        """A child run for ``key`` (a trial or population slot id), created once."""
        run = self.runs.get(key)
        if run is None and self.enabled:
            name = key + (f" {group}" if group else "")
            run = self.tracker.start_run(name, parent_id=self.parent_run_id,
                                         tags={"trial_id": key, "sweep": Path(self.sweep_dir).name, **tags})
            if run is not None:
                self.tracker.log_params(run, {**self.fixed_params, **params, "trial_id": key})
                self.runs[key] = run
                atomic_write_json(Path(self.sweep_dir) / RUNS_FILE, self.runs)
        return run

    def _runs_for(self, trial) -> list[tuple[str | None, Any]]:
        """(child run, result of it) pairs of ``trial``: itself, or each slot of a population
        (``pick(result)`` gives that slot's part of a result)."""
        config = dict(trial.config)
        slots = config.pop(MEMBERS_KEY, None)
        group = config.get("modality")
        if slots is None:
            return [(self._start(trial.trial_id, group, config, {}), lambda result: result)]
        out = []
        for i, values in enumerate(slots):
            run = self._start(slot_id(trial.trial_id, i), group,
                              {**config, **values, "population_size": len(slots)},
                              {"population_trial": trial.trial_id})
            out.append((run, lambda result, i=i: slot_metrics(result, i)))
        return out

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._runs_for(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        step = int(result.get("training_iteration", 0))
        for run, pick in self._runs_for(trial):
            if run is not None:
                rows = [(k, v, step) for k, v in mlflow_metrics(pick(result)).items()]
                self._pending.setdefault(run, []).extend(rows)
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self._flush()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        last = trial.last_result or {}
        runs = self._runs_for(trial)
        self._flush([run for run, _ in runs if run is not None])
        for run, pick in runs:
            if run is not None:
                mine = pick(last)
                final = {f"final/{k}": v for k, v in mlflow_metrics(mine).items()}
                final["final/epochs"] = float(last.get("training_iteration", 0))
                self.tracker.log_metrics(run, final)
                self.tracker.end_run(run, "FAILED" if mine.get("error") else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        runs = self._runs_for(trial)
        self._flush([run for run, _ in runs if run is not None])
        for run, _ in runs:
            self.tracker.end_run(run, "FAILED")

    def on_experiment_end(self, trials: list, **info) -> None:
        self._flush()
