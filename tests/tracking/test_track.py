"""MLflow that users find: `xmr track` never makes a second parent run of a run in one store, one
default store for runs and sweeps, and every parent run names the code it was made with."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fake_runs import make_finished_run
from mlflow.tracking import MlflowClient

from scalable_xmr.cli import main
from scalable_xmr.config import SDMLConfig
from scalable_xmr.runs.session import parent_run
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking import tracker as tracker_module
from scalable_xmr.tracking.runs import job_tracking_uri
from scalable_xmr.tracking.tracker import (
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    JOB_SUBMISSION_ENV,
    VERSION_TAG,
    Tracker,
    default_tracking_uri,
    source_tags,
)

MODALITIES = ("image", "text")


@pytest.fixture
def finished_run(tmp_path, small_xmedia) -> Path:
    """A finished SDML run trained with --no-tracking (no MLflow record), with its train logs."""
    run = make_finished_run(tmp_path / "run", small_xmedia, MODALITIES, SDMLConfig(dim=32),
                            record_configs=True)
    store = RunStore(run)
    for m in MODALITIES:
        history = [{"epoch": e, "loss_train": 1.0 / e, "loss_recon": 0.5, "loss_label": 0.5,
                    "loss_val_label": 0.6} for e in (1, 2)]
        store.train_log_path(m).write_text(json.dumps(
            {"best_epoch": 2, "best_val_label": 0.6, "epochs": 2, "history": history}))
    return run


def _parents(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _children(uri: str, parent: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.mlflow.parentRunId = '{parent}'")


def test_two_track_calls_make_one_parent_run(finished_run, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["track", "--run", str(finished_run), "--tracking-uri", uri]) == 0
    first = capsys.readouterr().out.strip()
    parent = RunStore(finished_run).read().mlflow["parent_run_id"]
    assert first.startswith(f"logged {finished_run} to MLflow under a new parent run: {uri}")
    assert main(["track", "--run", str(finished_run), "--tracking-uri", uri]) == 0
    second = capsys.readouterr().out.strip()
    assert second == (f"{finished_run} is already logged to MLflow: {uri} (experiment "
                      f"{_parents(uri)[0].info.experiment_id}, run {parent}); nothing to do")
    assert main(["track", "--run", str(finished_run)]) == 0  # the recorded store by default
    assert "already logged" in capsys.readouterr().out
    assert [r.info.run_id for r in _parents(uri)] == [parent]
    assert sorted(r.data.tags["modality"] for r in _children(uri, parent)) == list(MODALITIES)
    assert RunStore(finished_run).read().mlflow["parent_run_id"] == parent


def test_track_completes_a_parent_whose_job_stopped_tracking(finished_run, tmp_path, capsys):
    """The job made its parent (and one child) before MLflow went away: `xmr track` logs into that
    parent, replacing the partial child, instead of opening a second parent."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "interrupted")
    parent = tracker.start_run("sdml:run", tags={"job": "train_xmedia"})
    tracker.log_params(parent, {"modalities": "image", "lam": 0.5})  # as the job had it
    tracker.start_run("image", parent_id=parent, tags={"modality": "image"})  # left RUNNING
    store = RunStore(finished_run)
    meta = store.read()
    meta.mlflow = {"tracking_uri": uri, "experiment_id": tracker.experiment_id, "parent_run_id": parent,
                   "run_dir": store.uri}
    store.write(meta)
    assert main(["track", "--run", str(finished_run)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == (f"logged {finished_run} to MLflow into its parent run: {uri} "
                   f"(experiment {tracker.experiment_id}, run {parent})")
    assert [r.info.run_id for r in _parents(uri)] == [parent]
    run = MlflowClient(tracking_uri=uri).get_run(parent)
    assert run.info.status == "FINISHED" and run.data.params["modalities"] == "image"  # kept
    assert "map/mean" in run.data.metrics and run.data.tags["xmr.completed_from_store"] == "true"
    children = _children(uri, parent)
    assert sorted(r.data.tags["modality"] for r in children) == list(MODALITIES)  # no duplicate
    assert all(r.info.status == "FINISHED" for r in children)
    assert main(["track", "--run", str(finished_run)]) == 0
    assert "already logged" in capsys.readouterr().out


def test_a_run_tracked_in_another_store_gets_one_parent_in_this_one(finished_run, tmp_path, capsys):
    first, second = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    assert main(["track", "--run", str(finished_run), "--tracking-uri", first]) == 0
    old = RunStore(finished_run).read().mlflow["parent_run_id"]
    capsys.readouterr()
    assert main(["track", "--run", str(finished_run), "--tracking-uri", second]) == 0
    out = capsys.readouterr().out.strip()
    assert f"under a new parent run: {second}" in out
    assert out.endswith(f"(run.json's parent run {old} is in another store, {first})")
    assert main(["track", "--run", str(finished_run), "--tracking-uri", second]) == 0
    assert "already logged" in capsys.readouterr().out
    assert len(_parents(first)) == 1 and len(_parents(second)) == 1  # one per store


def test_runs_and_sweeps_share_one_default_store_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(JOB_SUBMISSION_ENV, raising=False)
    store = f"sqlite:///{tmp_path}/mlflow.db"  # MLflow's own default: `mlflow ui` here finds it
    assert default_tracking_uri("runs/x") == default_tracking_uri("sweeps/s") == store
    assert default_tracking_uri("/elsewhere/runs/x") == store
    # under `ray job submit` the working directory is deleted with the job: beside the run then
    env = {JOB_SUBMISSION_ENV: '{"metadata": {"job_submission_id": "j"}}'}
    assert default_tracking_uri("/shared/runs/x", env) == "sqlite:////shared/runs/mlflow.db"
    # a run that recorded a store (e.g. the old default beside it) keeps logging there
    old = RunMeta(kind="sdml", dataset={}, mlflow={"tracking_uri": "sqlite:////old/runs/mlflow.db"})
    assert job_tracking_uri(None, old, "runs/x") == "sqlite:////old/runs/mlflow.db"
    assert job_tracking_uri("http://h:5000", old, "runs/x") == "http://h:5000"
    assert job_tracking_uri(None, RunMeta(kind="sdml", dataset={}), "runs/x") == store


def test_resuming_into_another_store_starts_a_parent_there(tmp_path):
    """run.json's parent is not in the store this job logs to: continuing it would log into a run
    id that store does not have, so the job gets a parent of its own there, linked to the old."""
    store = RunStore(tmp_path / "run")
    store.root.mkdir()
    meta = RunMeta(kind="sdml", dataset={"uri": "/d", "name": "d"})
    first = Tracker(f"sqlite:///{tmp_path}/a.db", "exp")
    with parent_run(store, meta, first, "new", "train_xmedia", {}) as old:
        pass
    second = Tracker(f"sqlite:///{tmp_path}/b.db", "exp")
    with parent_run(store, store.read(), second, "resume", "train_xmedia", {}) as new:
        assert new != old
    tags = second.client.get_run(new).data.tags
    assert tags["xmr.previous_parent_run_id"] == old and tags["xmr.previous_tracking_uri"] == first.uri
    assert store.read().mlflow["parent_run_id"] == new and store.read().mlflow["tracking_uri"] == second.uri


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(tracker_module.PACKAGE_DIR), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_parent_runs_are_tagged_with_the_version_and_commit(tmp_path):
    from scalable_xmr import __version__

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    parent = tracker.start_run("p")
    child = tracker.start_run("c", parent_id=parent)
    tags = tracker.client.get_run(parent).data.tags
    assert tags[VERSION_TAG] == __version__
    try:
        head = _git("rev-parse", "HEAD")
        dirty = "true" if _git("status", "--porcelain") else "false"
    except (OSError, subprocess.CalledProcessError):  # not run from a git checkout
        assert GIT_COMMIT_TAG not in tags
    else:
        assert tags[GIT_COMMIT_TAG] == head and tags[GIT_DIRTY_TAG] == dirty
    assert VERSION_TAG not in tracker.client.get_run(child).data.tags  # children: their parent's


def test_source_tags_without_git_or_outside_a_checkout(tmp_path, monkeypatch):
    from scalable_xmr import __version__

    plain = tmp_path / "site-packages" / "scalable_xmr"  # an installed copy: no checkout around it
    plain.mkdir(parents=True)
    (plain / "__init__.py").write_text("")
    assert source_tags(plain) == {VERSION_TAG: __version__}
    repo = tmp_path / "user-repo"  # a venv inside a user's repository: the package is not tracked
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "venv" / "scalable_xmr").mkdir(parents=True)
    (repo / "venv" / "scalable_xmr" / "__init__.py").write_text("")
    assert source_tags(repo / "venv" / "scalable_xmr") == {VERSION_TAG: __version__}
    source_tags.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # git is not installed
    try:
        assert source_tags() == {VERSION_TAG: __version__}
    finally:
        source_tags.cache_clear()
