"""End-to-end SDML runs on a local 2-CPU Ray: strategies, restarts, MLflow, run-store contract."""

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
from scalable_xmr.errors import XMRError
from scalable_xmr.sdml.job import TrainRequest, train_sdml
from scalable_xmr.store import torchfile, training_state
from scalable_xmr.store.run_store import RunStore

pytestmark = pytest.mark.slow
TINY = SDMLConfig(dim=32, hidden=64, epochs=4, batch_size=20, checkpoint_every=2, lr=1e-3)


def _request(tmp_path, data, **kw):
    defaults = dict(run_dir=str(tmp_path / "run"), dataset_uri=data, sdml=TINY, show_progress=False,
                    tracking=TrackingConfig(f"sqlite:///{tmp_path}/mlflow.db", "test"))
    return TrainRequest(**{**defaults, **kw})


def _assert_complete(run_dir, modalities):
    store = RunStore(run_dir)
    meta = store.read_finished()
    assert sorted(meta.finished_modalities()) == sorted(modalities)
    metrics = json.loads(store.metrics_path.read_text())
    n = len(modalities)
    assert len(metrics["map"]) == n * (n - 1)
    assert all(0.0 <= v <= 1.0 for v in metrics["map"].values())
    for m in modalities:
        assert store.model_path(m).is_file()
        for split in ("val", "test"):
            assert store.embeddings_path(m, split).is_file()
        assert not training_state.state_files([store.checkpoint_path(m).parent])  # removed once finished
    assert not (store.root / "joint_checkpoint.pt").exists()
    for plot in ("map_heatmap.png", "precision_recall.png", "precision_scope.png"):
        assert (store.plots_dir / plot).stat().st_size > 1000
    return meta.to_json(), metrics  # run.json as written


def test_parallel_run_is_complete_and_tracked(tmp_path, small_xmedia, ray_local):
    summary = train_sdml(_request(tmp_path, small_xmedia))
    meta, metrics = _assert_complete(summary.run_dir, ["image", "text", "audio", "3d", "video"])
    assert meta["strategy"] == "parallel"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["test"], output_format="list")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    maps = {k: v for k, v in parent.data.metrics.items() if k.startswith("map/")}
    assert len(maps) == 21 and maps["map/mean"] == pytest.approx(metrics["map_mean"])
    assert maps["map/image-text"] == pytest.approx(metrics["map"]["image-text"])
    assert parent.data.params["projection_sha256"] == meta["projection"]["sha256"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["modality"] for r in children) == sorted(meta["modalities"])
    client = mlflow.MlflowClient()
    history = client.get_metric_history(children[0].info.run_id, "loss/val_label")
    assert [h.step for h in history] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"metrics.json", "map_heatmap.png", "projection.arrow"} <= artifacts


@pytest.mark.parametrize("strategy", ["serial", "joint"])
def test_serial_and_joint_runs_are_complete(tmp_path, small_xmedia, ray_local, strategy):
    mods = ("image", "audio", "3d")
    summary = train_sdml(_request(tmp_path, small_xmedia, modalities=mods, sdml=replace(TINY, lr=None),
                                  resources=ResourceConfig(strategy=strategy)))
    meta, _ = _assert_complete(summary.run_dir, list(mods))
    assert meta["strategy"] == strategy
    assert all(meta["modalities"][m]["epochs"] == TINY.epochs for m in mods)
    # lr=None: the SDML reference code's rate per modality (image 1e-4, every other 2e-4), recorded
    # as used in run.json and in each modality's MLflow child run.
    reference = {"image": 1e-4, "audio": 2e-4, "3d": 2e-4}
    assert {m: meta["modalities"][m]["config"]["lr"] for m in mods} == reference
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    children = {m: client.get_run(meta["modalities"][m]["mlflow_run_id"]).data.params for m in mods}
    assert all(params["modality"] == m for m, params in children.items())
    assert {m: float(params["lr"]) for m, params in children.items()} == reference
    parent = client.get_run(meta["mlflow"]["parent_run_id"]).data.params
    assert parent["lr"] == "image=0.0001,audio=0.0002,3d=0.0002"  # never "None"


def test_killed_actor_restarts_and_resumes_from_checkpoint(tmp_path, small_xmedia, ray_local, crash_after):
    # The image actor hard-crashes (os._exit) right after its epoch-2 checkpoint, once.
    crash_after({"image": 2})
    req = _request(tmp_path, small_xmedia, modalities=("image", "audio"))
    summary = train_sdml(req)
    assert summary.results["image"].resumed_at_epoch == [2]
    assert summary.results["audio"].resumed_at_epoch == []
    meta, _ = _assert_complete(summary.run_dir, ["image", "audio"])
    assert meta["modalities"]["image"]["resumed_at_epoch"] == [2]
    # The history still holds every epoch exactly once.
    assert [h["epoch"] for h in summary.results["image"].history] == [1.0, 2.0, 3.0, 4.0]
    marker = RunStore(summary.run_dir).modality_dir("image") / "checkpoints" / ".fault_injected"
    crashed_pid = int(marker.read_text().split()[0])
    assert crashed_pid != summary.results["image"].pid  # finished in a new process


def test_resume_a_failed_run_trains_only_what_is_missing(tmp_path, small_xmedia, ray_local):
    req = _request(tmp_path, small_xmedia, modalities=("image", "audio"))
    train_sdml(req)
    store = RunStore(req.run_dir)
    meta = store.read()
    model_bytes = store.model_path("image").read_bytes()
    # Pretend the job died before audio finished: audio pending, status running.
    meta.status = "running"
    meta.modalities["audio"] = {"status": "pending"}
    store.write(meta)
    with pytest.raises(XMRError, match="already holds a running run; pass --resume"):
        train_sdml(req)
    # A modality that started with other settings is refused before any actor starts, run unchanged.
    meta.modalities["audio"] = {"status": "pending", "config": meta.modalities["image"]["config"]
                                | {"lr": TINY.lr}}
    store.write(meta)
    before = store.run_json.read_bytes()
    with pytest.raises(XMRError, match=r"modality 'audio' started training with lam=0\.5, --resume asks "
                                       r"for lam=0\.9; resume with the run's settings or pass --overwrite"):
        train_sdml(_request(tmp_path, small_xmedia, modalities=("image", "audio"), resume=True,
                            sdml=replace(TINY, lam=0.9)))
    assert store.run_json.read_bytes() == before
    summary = train_sdml(_request(tmp_path, small_xmedia, modalities=("image", "audio"), resume=True))
    assert list(summary.results) == ["audio"]
    assert store.model_path("image").read_bytes() == model_bytes
    _assert_complete(summary.run_dir, ["image", "audio"])
    # --resume of the finished run, with tracking off where the run was tracked: nothing to train,
    # and not one byte of the finished run changes (it stayed finished; issue #14, defect 1).
    before = {p: p.read_bytes() for p in Path(req.run_dir).rglob("*") if p.is_file()}
    again = train_sdml(_request(tmp_path, small_xmedia, modalities=("image", "audio"), resume=True,
                                tracking=TrackingConfig(enabled=False)))
    assert again.results == {} and again.metrics == summary.metrics
    assert {p: p.read_bytes() for p in Path(req.run_dir).rglob("*") if p.is_file()} == before


def test_a_failed_run_keeps_its_training_state_resumes_and_then_drops_it(tmp_path, small_xmedia, ray_local,
                                                                        crash_after):
    """Image's actor dies after its epoch-2 checkpoint and may not restart: the run fails and keeps
    every checkpoint; --resume continues image from it; once finished, no training state is left."""
    crash_after({"image": 2})
    req = _request(tmp_path, small_xmedia, modalities=("image", "audio"),
                   resources=ResourceConfig(max_restarts=0))
    with pytest.raises(XMRError):
        train_sdml(req)
    store = RunStore(req.run_dir)
    meta = store.read()
    assert meta.status == "failed" and meta.modalities["image"]["status"] == "failed"
    assert store.checkpoint_path("image").is_file()  # what --resume needs
    if meta.modalities["audio"]["status"] == "finished":  # a finished part of a failed run keeps it too
        assert store.checkpoint_path("audio").is_file()
    summary = train_sdml(replace(req, resume=True))
    assert summary.results["image"].resumed_at_epoch == [2]
    _assert_complete(summary.run_dir, ["image", "audio"])
    assert summary.training_state.startswith("removed ")


def test_keep_checkpoints_patience_and_the_footer(tmp_path, small_xmedia, ray_local, capsys):
    """--keep-checkpoints keeps a finished run's training state; --patience stops a modality (lr 1e-2
    overfits this tiny data: image's best validation label loss comes within a few epochs) and
    run.json and the footer say where; without it the footer names the flag."""
    from scalable_xmr.cli.train import main as train_main
    from scalable_xmr.config import patience_stop

    def argv(run, *modalities):
        return ["--data", small_xmedia, "--run", str(run), *sum((["--modality", m] for m in modalities), []),
                "--dim", "32", "--batch-size", "20", "--lr", "1e-2", "--no-tracking", "--no-progress"]

    run = tmp_path / "run"
    kept = [*argv(run, "image", "3d"), "--epochs", "12", "--patience", "2", "--keep-checkpoints"]
    assert train_main(kept) == 0
    out = capsys.readouterr().out
    store = RunStore(run)
    meta = store.read_finished()
    for m in ("image", "3d"):
        entry, log = meta.modalities[m], json.loads(store.train_log_path(m).read_text())
        vals = [h["loss_val_label"] for h in log["history"]]
        stop = patience_stop(vals + [float("inf")] * (12 - len(vals)), 2, higher_is_better=False)
        assert entry["patience"] == entry["config"]["patience"] == 2
        assert entry["stopped_early"] == stop and entry["epochs"] == len(vals) == (stop or 12)
        line = (f"stopped early at epoch {stop} of 12 (best epoch {entry['best_epoch']}, --patience 2)"
                if stop else f"ran all 12 epochs (best epoch {entry['best_epoch']}, --patience 2)")
        assert f"epochs        : {m}: {line}" in out
        assert store.checkpoint_path(m).is_file() and torchfile.previous(store.checkpoint_path(m)).is_file()
    assert meta.modalities["image"]["stopped_early"] < 12
    assert "training state: kept (--keep-checkpoints): " in out
    # --resume --keep-checkpoints of that finished run: it is only read, and its state is there
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert train_main([*kept, "--resume"]) == 0
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # Without --patience, a best epoch in the first tenth: the footer names the flag.
    assert train_main([*argv(tmp_path / "hint", "image"), "--epochs", "60"]) == 0
    out = capsys.readouterr().out
    log = json.loads(RunStore(tmp_path / "hint").train_log_path("image").read_text())
    assert log["best_epoch"] <= 6 and log["patience"] is None  # in the first tenth
    stop = patience_stop([h["loss_val_label"] for h in log["history"]], 6, higher_is_better=False)
    hint = (f"epochs        : image: best epoch {log['best_epoch']} of 60; --patience 6 would have stopped "
            f"at epoch {stop}")
    assert stop and hint in out
    assert "training state: removed " in out
