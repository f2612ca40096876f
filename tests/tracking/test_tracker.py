"""MLflow on the driver: a job's parent run kept in step with run.json, failures recorded."""

from __future__ import annotations

import pytest

from scalable_xmr.runs.session import parent_run
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker, absolute_tracking_uri, experiment_name


def test_parent_run_is_recorded_and_ends_failed_with_the_run(tmp_path):
    store = RunStore(tmp_path / "run")
    store.root.mkdir()
    meta = RunMeta(kind="sdml", dataset={"uri": "/d", "name": "d"})
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    with pytest.raises(ValueError, match="boom"):
        with parent_run(store, meta, tracker, "new", "train_xmedia", {"lam": 0.5}) as parent:
            assert store.read().mlflow["parent_run_id"] == parent  # recorded before any work
            raise ValueError("boom")
    assert store.read().status == "failed" and store.read().error == "ValueError: boom"
    run = tracker.client.get_run(parent)
    assert run.info.status == "FAILED" and run.data.params["lam"] == "0.5"
    assert tracker.run_is_active(parent) and not tracker.run_is_active("no-such-run")
    assert experiment_name(tracker.uri, tracker.experiment_id) == "exp"
    # Resuming continues the recorded parent instead of starting another.
    with parent_run(store, store.read(), tracker, "resume", "train_xmedia", {}) as again:
        assert again == parent
    assert tracker.client.get_run(parent).info.status == "FINISHED"


def test_tracking_off_records_nothing_and_uris_are_absolute(tmp_path, monkeypatch):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", enabled=False)
    assert tracker.start_run("x") is None and not tracker.run_is_active("x")
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path}/rel.db"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_disabled_tracker_ignores_every_call_even_with_a_stored_run_id(tmp_path):
    """--resume --no-tracking of a tracked run hands the stored parent id to a tracker that is off:
    it must do nothing (it raised AttributeError and flipped the finished run to failed)."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", enabled=False)
    (tmp_path / "f.txt").write_text("x")
    tracker.end_run("0123456789abcdef", "FAILED")
    tracker.log_params("0123456789abcdef", {"a": 1})
    tracker.log_metrics("0123456789abcdef", {"m": 1.0})
    tracker.log_artifact("0123456789abcdef", tmp_path / "f.txt")
    assert not tracker.live("0123456789abcdef")


def test_the_stored_footer_says_when_the_record_cannot_be_right_any_more(tmp_path):
    from scalable_xmr.store.meta import RunMeta
    from scalable_xmr.tracking.runs import stored_run_url

    meta = RunMeta(kind="sdml", dataset={}, mlflow={"tracking_uri": f"sqlite:///{tmp_path}/gone.db",
                                                    "experiment_id": "1", "parent_run_id": "abc",
                                                    "run_dir": str(tmp_path / "a")})
    assert stored_run_url(meta, tmp_path / "a") == (
        f"sqlite:///{tmp_path}/gone.db (experiment 1, run abc) [that tracking store is not there any more]")
    (tmp_path / "gone.db").write_text("")
    moved = stored_run_url(meta, tmp_path / "b")
    assert moved.endswith(f"run abc) [recorded when the run was at {tmp_path / 'a'}]")
    assert stored_run_url(meta, tmp_path / "a").endswith("run abc)")
    assert stored_run_url(RunMeta(kind="sdml", dataset={})) == "(tracking off)"
