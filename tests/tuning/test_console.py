"""What a sweep prints while it runs (tuning/console.py), without Ray: Tune silenced through its own
switches, one line per finished trial, and a resumed sweep's console set by this run."""

from __future__ import annotations

import io
import logging
import os
import pickle
from types import SimpleNamespace

import pytest
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from scalable_xmr.tuning.console import (
    OWN_LOGGERS_ENV,
    SILENT_TUNE_ENV,
    TrialLines,
    set_console,
    tune_callbacks,
    tune_console,
)

SWITCHES = [*SILENT_TUNE_ENV, *OWN_LOGGERS_ENV]


@pytest.fixture(autouse=True)
def no_switches(monkeypatch):
    for key in SWITCHES:
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize(("verbose", "own", "expected"), [
    (0, True, {**SILENT_TUNE_ENV, **OWN_LOGGERS_ENV}), (0, False, SILENT_TUNE_ENV),
    (1, True, OWN_LOGGERS_ENV), (1, False, {}),
])
def test_tune_console_sets_tunes_switches_while_it_runs(verbose, own, expected):
    with tune_console(verbose, own):
        assert {k: os.environ[k] for k in SWITCHES if k in os.environ} == expected
    assert not any(k in os.environ for k in SWITCHES)


def test_a_switch_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    with tune_console(0, True):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"


def test_tunes_resume_hint_is_dropped_only_while_silent(caplog):
    tune_logger = logging.getLogger("ray.tune.tune")

    def logged(verbose: int) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ray.tune.tune"), tune_console(verbose, True):
            tune_logger.warning("Experiment has been interrupted, but the most recent state was saved.\n"
                                "Resume experiment with: Tuner.restore(path=...)")
            tune_logger.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.")
        return [r.getMessage().split(" ")[0] for r in caplog.records]

    assert logged(0) == ["Stop"]
    assert logged(1) == ["Experiment", "Stop"]
    assert not tune_logger.filters


def trial(trial_id: str, status: str, config: dict, result: dict) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, config=config, last_result=result,
                           error_file=f"/s/{trial_id}/error.txt")


def test_trial_lines_count_what_has_ended_and_name_members():
    out = io.StringIO()
    lines = TrialLines(3, ["lam", "lr"], "best_anchor_map", 10, "modality", stream=out)
    done = trial("t_00000", "TERMINATED", {"modality": "audio", "lam": 0.5, "lr": 1e-4}, {})
    ending = trial("t_00001", "RUNNING", {"modality": "text", "lam": 0.25, "lr": 2e-4},
                   {"best_anchor_map": 0.5, "training_iteration": 10})
    pending = trial("t_00002", "PENDING", {}, {})
    lines.on_trial_complete(0, [done, ending, pending], ending)
    ending.status = "TERMINATED"
    population = trial("t_00002", "RUNNING", {"modality": "text", "members": [{"lam": 0.1, "lr": 1e-3},
                                                                          {"lam": 0.9, "lr": 1e-3}]},
                       {"members": [{"best_anchor_map": 0.25}, {"best_anchor_map": 0.75}],
                        "training_iteration": 4})
    lines.on_trial_complete(0, [done, ending, population], population)
    failed = trial("t_00003", "RUNNING", {"modality": "audio", "lam": 0.5, "lr": 1e-4}, {})
    lines.on_trial_error(0, [done, failed], failed)
    assert out.getvalue().splitlines() == [
        "trial 2/3 t_00001 text: lam 0.25, lr 0.0002 -> best_anchor_map 0.5 (10/10 epochs)",
        "trial 3/3 t_00002-m0 text: lam 0.1, lr 0.001 -> best_anchor_map 0.25 (4/10 epochs, stopped early)",
        "trial 3/3 t_00002-m1 text: lam 0.9, lr 0.001 -> best_anchor_map 0.75 (4/10 epochs, stopped early)",
        "trial 2/3 t_00003 audio: lam 0.5, lr 0.0001 -> failed: see the error above and /s/t_00003/error.txt",
    ]


def test_trial_lines_pickle_without_their_stream():
    lines = TrialLines(2, ["lr"], "best_rsum", 10, None, stream=io.StringIO())
    again = pickle.loads(pickle.dumps(lines))  # Tune keeps callbacks in tuner.pkl
    assert again.stream is None and again.total == 2 and again.metric == "best_rsum"


def test_tune_callbacks_keep_csv_and_json_results_and_one_trial_lines():
    mine, old, new = object(), TrialLines(1, [], "m", 1, None), TrialLines(2, [], "m", 1, None)
    callbacks = tune_callbacks([mine, old], new)
    assert callbacks[0] is mine and callbacks[-1] is new and old not in callbacks
    assert [type(c) for c in callbacks[1:3]] == [CSVLoggerCallback, JsonLoggerCallback]
    json_logger = JsonLoggerCallback()
    given = tune_callbacks([json_logger], None)
    assert given[0] is json_logger and [type(c) for c in given[1:]] == [CSVLoggerCallback]


def test_set_console_on_a_restored_tuner():
    run_config = SimpleNamespace(verbose=1, callbacks=[TrialLines(1, [], "m", 1, None)])
    restored = SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: run_config))
    new = TrialLines(4, [], "m", 1, None)
    assert set_console(restored, 0, new) is True
    assert run_config.verbose == 0 and run_config.callbacks[-1] is new
    assert sum(isinstance(c, TrialLines) for c in run_config.callbacks) == 1
    assert set_console(SimpleNamespace(), 0, new) is False  # a Ray Client Tuner: left as pickled
