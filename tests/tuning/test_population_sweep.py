"""Population sweeps without Ray: drawing configurations, grouping them, one row per member, bad input."""

from __future__ import annotations

import math

import pytest
from one_line import fails_one_line

from scalable_xmr.tuning.population_trial import populations
from scalable_xmr.tuning.results import TrialRow, slot_rows
from scalable_xmr.tuning.space import build_space


def test_sample_is_the_grid_times_num_samples_within_the_ranges():
    space = build_space("sdml", grids=["lam=0.2,0.8", "hidden=32,64"], ranges=["lr=1e-5:1e-3:log"])
    configs = space.sample(num_samples=3, seed=0)
    assert len(configs) == space.n_configurations(3) == 12
    assert [(c["lam"], c["hidden"]) for c in configs[::3]] == [(0.2, 32), (0.2, 64), (0.8, 32), (0.8, 64)]
    assert all(1e-5 <= c["lr"] <= 1e-3 for c in configs)
    assert len({c["lr"] for c in configs}) == 12  # drawn per configuration
    assert space.sample(3, seed=0) == configs and space.sample(3, seed=1) != configs  # seeded
    ints = build_space("sdml", ranges=["batch_size=2:3"]).sample(200, seed=0)
    assert {c["batch_size"] for c in ints} == {2, 3}  # both ends of an int range


def test_populations_group_shape_compatible_configurations():
    configs = [{"lam": 0.1 * i, "lr": 1e-4, "hidden": 32 if i % 2 else 64} for i in range(7)]
    pops = populations(configs, size=2)
    # hidden 64: members 0, 2, 4, 6 -> two populations; hidden 32: 1, 3, 5 -> two
    assert [[round(c["lam"] * 10) for c in p] for p in pops] == [[0, 2], [4, 6], [1, 3], [5]]
    assert all(len({c["hidden"] for c in p}) == 1 for p in pops)
    assert sum(len(p) for p in pops) == 7


def test_a_population_trial_gives_one_row_per_member():
    row = TrialRow("abc_00001", {"modality": "audio", "members": [{"lam": 0.1, "lr": 1e-3},
                                                                   {"lam": 0.9, "lr": 1e-4}]},
                   {"training_iteration": 2, "best_anchor_map": 0.7,
                    "members": [{"best_anchor_map": 0.5}, {"best_anchor_map": math.nan, "error": "boom"}]},
                   "audio")
    first, second = slot_rows(row)
    assert (first.trial_id, first.config, first.group) == ("abc_00001-m0", {"modality": "audio", "lam": 0.1,
                                                                            "lr": 1e-3}, "audio")
    assert first.metrics["best_anchor_map"] == 0.5 and first.metrics["training_iteration"] == 2
    assert first.error is None and second.error == "boom"
    plain = TrialRow("x", {"modality": "audio", "lam": 0.5}, {"best_anchor_map": 0.3}, "audio")
    assert slot_rows(plain) == [plain]


@pytest.mark.parametrize("argv, message", [
    (["--model", "vse", "--population", "4"], "--population applies to --model sdml only, not vse"),
    (["--model", "sdml", "--population", "0"], "--population must be an integer >= 1, got 0"),
])
def test_bad_population_flags_are_one_line_errors(tmp_path, capsys, argv, message):
    from scalable_xmr.cli.sweep import main

    fails_one_line(main, capsys, [*argv, "--data", str(tmp_path), "--storage", str(tmp_path / "s")], message)


def test_member_runs_and_buffered_metrics_reach_mlflow(tmp_path, monkeypatch):
    """Each population member is its own child run; per-epoch metrics are buffered (no write per
    result) and written, every step, when the trial ends."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from scalable_xmr.tracking.tracker import Tracker
    from scalable_xmr.tuning import tracking

    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 3600.0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = Tracker(uri, "t").start_run("sweep:x")
    cb = tracking.SweepTracking(uri, "t", parent, str(tmp_path), {"model": "sdml"})
    trial = SimpleNamespace(trial_id="abc_00000", last_result=None,
                            config={"modality": "audio", "members": [{"lam": 0.1, "lr": 1e-3},
                                                                     {"lam": 0.9, "lr": 1e-4}]})
    cb.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        result = {"training_iteration": epoch, "members": [{"val_label_loss": 1.0 / epoch},
                                                           {"val_label_loss": 2.0 / epoch}]}
        cb.on_trial_result(0, [], trial, result)
    client = MlflowClient(uri)
    runs = {r.data.params["trial_id"]: r for r in client.search_runs([cb.tracker.experiment_id])
            if "mlflow.parentRunId" in r.data.tags}
    assert set(runs) == {"abc_00000-m0", "abc_00000-m1"}
    assert runs["abc_00000-m1"].data.params["lam"] == "0.9"
    assert client.get_metric_history(runs["abc_00000-m0"].info.run_id, "loss/val_label") == []  # buffered
    trial.last_result = result
    cb.on_trial_complete(0, [], trial)
    for name, values in (("abc_00000-m0", [1.0, 0.5]), ("abc_00000-m1", [2.0, 1.0])):
        history = client.get_metric_history(runs[name].info.run_id, "loss/val_label")
        assert sorted((m.step, m.value) for m in history) == [(1, values[0]), (2, values[1])]
        assert client.get_run(runs[name].info.run_id).info.status == "FINISHED"
