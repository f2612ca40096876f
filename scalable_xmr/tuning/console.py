"""What a sweep prints while it runs: one line per finished trial, and Tune kept silent.

Tune's own console (a configuration box, a status table every few seconds, a box per trial start
and result, the TensorBoard hint) was 277 of the 321 lines of an 8-trial sweep. By default a sweep
prints instead, on stderr, one line per trial as it ends::

    trial 3/8 c1_00002 audio: lam 0.3822, lr 1.654e-05 -> best_anchor_map 0.1947 (10/10 epochs)

``--verbose`` / XMR_DEBUG=1 give Tune its status table back (distributed/logs.py); ``--quiet``
drops these lines too. Tune's warnings and errors (a failed trial's traceback, "no trial could be
placed") print either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from ray import tune

from scalable_xmr.tuning.results import TrialRow, slot_rows

# Ray 2.60's Tune (ray/tune/experimental/output.py) prints its configuration box, "View detailed
# results here" and the TensorBoard hint even at verbose=0; its older console, chosen by
# RAY_AIR_NEW_OUTPUT=0, prints nothing at verbose=0. The excessive-snapshot warning is about our
# own choice to keep one checkpoint per trial (CheckpointConfig(num_to_keep=1)): 0 turns it off.
SILENT_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0",
                   "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
# Tune adds a CSV, a JSON and a TensorBoard logger to every run unless this is set. We keep the CSV
# and JSON files (each trial's result.json: tests/e2e/test_fault_suite.py reads it) by giving them
# ourselves (tune_callbacks); the TensorBoard one wrote event files no one reads, and warned about
# every --population result (a list of slots it cannot log).
OWN_LOGGERS_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


class _NotTunesResumeHint(logging.Filter):
    """After Ctrl-C Tune logs how to resume with ``Tuner.restore(...)``; the sweep prints its own
    resume command (cli/sweep.py), the one that works."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Experiment has been interrupted")


@contextlib.contextmanager
def tune_console(verbose: int, own_loggers: bool) -> Iterator[None]:
    """While a Tuner runs: Tune's console at ``verbose`` (0: silent, 1: status table, 2: every
    result), and with ``own_loggers`` (its callbacks came through :func:`tune_callbacks`) no
    logger of Tune's own. Tune reads these variables when ``fit`` starts; a value the user set is
    kept."""
    wanted = {**(SILENT_TUNE_ENV if verbose == 0 else {}), **(OWN_LOGGERS_ENV if own_loggers else {})}
    changed = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(changed)
    tune_logger, hint = logging.getLogger("ray.tune.tune"), _NotTunesResumeHint()
    if verbose == 0:
        tune_logger.addFilter(hint)
    try:
        yield
    finally:
        tune_logger.removeFilter(hint)
        for key in changed:
            os.environ.pop(key, None)


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_line(row: TrialRow, done: int, total: int, params: list[str], metric: str,
               epochs: int | None) -> str:
    """One finished trial (or population slot), as :class:`TrialLines` prints it.

    >>> row = TrialRow("c1_00002", {"lam": 0.38220, "lr": 1.65434e-05}, {"best_anchor_map": 0.19468,
    ...                "training_iteration": 3}, "audio")
    >>> print(trial_line(row, 3, 8, ["lam", "lr"], "best_anchor_map", 10))
    trial 3/8 c1_00002 audio: lam 0.3822, lr 1.654e-05 -> best_anchor_map 0.1947 (3/10 epochs, stopped early)
    """
    where = f"trial {done}/{total} {row.trial_id}" + (f" {row.group}" if row.group else "")
    config = ", ".join(f"{p} {_value(row.config[p])}" for p in params if p in row.config)
    if row.error:
        return f"{where}: {config} -> failed: {row.error}"
    ran = row.metrics.get("training_iteration")
    if isinstance(ran, int | float) and epochs:
        ran = f" ({int(ran)}/{epochs} epochs{', stopped early' if ran < epochs else ''})"
    else:
        ran = ""
    return f"{where}: {config} -> {metric} {_value(row.metrics.get(metric))}{ran}"


class TrialLines(tune.Callback):
    """Tune callback on the driver: :func:`trial_line` for each trial that ends (finished, stopped
    early by the scheduler, or failed for good)."""

    def __init__(self, total: int, params: list[str], metric: str, epochs: int | None,
                 group_key: str | None, stream: TextIO | None = None) -> None:
        self.total, self.params, self.metric, self.epochs = total, list(params), metric, epochs
        self.group_key = group_key
        self.stream = stream

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": None}  # tuner.pkl keeps the settings only

    def _print(self, trials: list, trial, error: str | None) -> None:
        done = sum(1 for t in trials if t is trial or t.status in ("TERMINATED", "ERROR"))
        config = dict(trial.config)
        row = TrialRow(trial.trial_id, config, dict(trial.last_result or {}),
                       config.get(self.group_key) if self.group_key else None, error)
        for slot in slot_rows(row):
            print(trial_line(slot, done, self.total, self.params, self.metric, self.epochs),
                  file=self.stream or sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._print(trials, trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = getattr(trial, "error_file", None)
        self._print(trials, trial, "see the error above" + (f" and {error}" if error else ""))


def tune_callbacks(callbacks: list, lines: TrialLines | None) -> list:
    """A sweep's Tune callbacks: ``callbacks`` (less any old :class:`TrialLines`), Tune's CSV and
    JSON result loggers, and ``lines``."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    kept = [c for c in callbacks if not isinstance(c, TrialLines)]
    loggers = [cls() for cls in (CSVLoggerCallback, JsonLoggerCallback)
               if not any(isinstance(c, cls) for c in kept)]
    return [*kept, *loggers, *([lines] if lines is not None else [])]


def set_console(tuner, verbose: int, lines: TrialLines | None) -> bool:
    """A restored Tuner's console settings and callbacks: this run's, not those pickled in
    tuner.pkl; False when they could not be set.

    ``Tuner.restore`` brings back the first run's RunConfig, its ``verbose`` and callbacks
    included, and takes no RunConfig of its own; Ray 2.60 keeps it on the Tuner's local
    TunerInternal (``get_run_config``), which ``fit`` reads. Without that object (a Ray Client
    Tuner) the pickled settings stand.
    """
    run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    if run_config is None:
        return False
    run_config.verbose = verbose
    run_config.callbacks = tune_callbacks(list(run_config.callbacks or []), lines)
    return True
