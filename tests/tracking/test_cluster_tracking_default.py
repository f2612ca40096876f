"""On a cluster head, a job given no --tracking-uri logs to the head's MLflow server (cluster.yaml
writes its URI to ~/.xmr/tracking_uri); anywhere else the local sqlite default stays."""

from __future__ import annotations

from pathlib import Path

from scalable_xmr.store.meta import RunMeta
from scalable_xmr.tracking.runs import job_tracking_uri
from scalable_xmr.tracking.tracker import cluster_tracking_uri

SERVER = "http://127.0.0.1:5000"


def head(home: Path, marker: str | None = SERVER + "\n") -> Path:
    (home / "ray_bootstrap_config.yaml").write_text("cluster_name: x\n")  # what the launcher leaves
    if marker is not None:
        (home / ".xmr").mkdir()
        (home / ".xmr" / "tracking_uri").write_text(marker)
    return home


def test_only_a_launcher_head_advertises_its_server(tmp_path):
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / ".xmr").mkdir()
    (laptop / ".xmr" / "tracking_uri").write_text(SERVER)  # a stray marker off a head is ignored
    assert cluster_tracking_uri(laptop, env={"XMR_TRACKING_URI": SERVER}) is None
    node = tmp_path / "head"
    node.mkdir()
    assert cluster_tracking_uri(head(node), env={}) == SERVER
    assert cluster_tracking_uri(node, env={"XMR_TRACKING_URI": "http://127.0.0.1:5001"}) == \
        "http://127.0.0.1:5001"  # the environment wins over the file
    bare = tmp_path / "bare"
    bare.mkdir()
    assert cluster_tracking_uri(head(bare, marker=None), env={}) is None  # a head without MLflow
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cluster_tracking_uri(head(empty, marker="\n"), env={}) is None


def test_a_job_on_the_head_defaults_to_it_but_flags_and_records_win(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XMR_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    meta = RunMeta(kind="sdml", dataset={})
    assert job_tracking_uri(None, meta, tmp_path / "run") == f"sqlite:///{tmp_path}/mlflow.db"  # not a head
    head(home)
    assert job_tracking_uri(None, meta, tmp_path / "run") == SERVER
    assert job_tracking_uri("sqlite:////elsewhere/m.db", meta, tmp_path / "run") == "sqlite:////elsewhere/m.db"
    meta.mlflow = {"tracking_uri": "sqlite:////recorded/m.db"}  # a resumed run keeps its store
    assert job_tracking_uri(None, meta, tmp_path / "run") == "sqlite:////recorded/m.db"
