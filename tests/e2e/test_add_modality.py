"""Adding a modality to a trained SDML run on a local 2-CPU Ray: results, byte-identity, crashes.

One 4-modality run is trained once per module; each test works on its own copy of it.
"""

import hashlib
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from scalable_xmr.cli.extend import main as add_main
from scalable_xmr.config import ModalityOverrides, ResourceConfig, SDMLConfig, TrackingConfig
from scalable_xmr.data.modality.dataset import open_dataset, write_modality_table
from scalable_xmr.errors import RunStateError
from scalable_xmr.functional.retrieval import mean_average_precision
from scalable_xmr.runs import staging
from scalable_xmr.sdml.extend import AddRequest, add_modalities
from scalable_xmr.sdml.job import TrainRequest, train_sdml
from scalable_xmr.store.run_store import RunStore

pytestmark = pytest.mark.slow
TINY = SDMLConfig(dim=32, hidden=64, epochs=4, batch_size=20, checkpoint_every=2, lr=1e-3)
OLD = ("image", "text", "audio", "3d")
ALL = (*OLD, "video")
REWRITTEN = ("run.json", "metrics.json")  # and plots/*: the only pre-existing files an add may change


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_untouched_except_commit(before: dict[str, str], after: dict[str, str]) -> None:
    """Every pre-existing file is still there and byte-identical, except run.json/metrics/plots."""
    for path, digest in before.items():
        assert path in after, f"{path} disappeared"
        if path not in REWRITTEN and not path.startswith("plots/"):
            assert after[path] == digest, f"{path} changed"


def from_scratch_map(run: Path, query: str, target: str, n_classes: int) -> float:
    """mAP of one ordered pair straight from the stored Parquet embeddings."""
    def load(m):
        table = pq.read_table(run / "modalities" / m / "embeddings" / "test.parquet")
        emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        labels = np.zeros((len(emb), n_classes), np.float32)
        for i, row in enumerate(table.column("labels").to_pylist()):
            for c in row:
                labels[i, c] = 1.0
        return emb, labels

    (q_emb, q_lab), (t_emb, t_lab) = load(query), load(target)
    return mean_average_precision(q_emb, t_emb, q_lab, t_lab)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, small_xmedia, ray_local) -> Path:
    root = tmp_path_factory.mktemp("base")
    tracking = TrackingConfig(f"sqlite:///{root}/mlflow.db", "test")
    train_sdml(TrainRequest(run_dir=str(root / "run"), dataset_uri=small_xmedia, sdml=TINY, modalities=OLD,
                            show_progress=False, tracking=tracking))
    return root / "run"


@pytest.fixture(scope="module")
def added_run(tmp_path_factory, base_run, small_xmedia):
    """A copy of the base run, ``video`` added with the job's own entry point (run's own MLflow)."""
    run = tmp_path_factory.mktemp("added") / "run"
    shutil.copytree(base_run, run)
    before = tree_hashes(run)
    old_meta = json.loads((run / "run.json").read_text())
    old_metrics = json.loads((run / "metrics.json").read_text())
    assert add_main(["--run", str(run), "--modality", "video", "--data", small_xmedia, "--no-progress"]) == 0
    return run, before, old_meta, old_metrics


@pytest.fixture
def run_copy(tmp_path, base_run) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


def test_added_modality_keeps_old_files_and_scores_new_pairs(added_run, capsys):
    run, before, old_meta, old_metrics = added_run
    after = tree_hashes(run)
    assert_untouched_except_commit(before, after)
    new_files = sorted(set(after) - set(before))
    assert all(p.startswith("modalities/video/") for p in new_files), new_files
    # The base run was finished without --keep-checkpoints, so it holds no training state (an add
    # never needs it); the new modality's was dropped before its folder moved in.
    assert not any("/checkpoints/" in p for p in after), sorted(after)
    assert {"modalities/video/model.pt", "modalities/video/embeddings/test.parquet"} <= set(new_files)
    assert not (run / ".staging").exists()

    store = RunStore(run)
    meta = store.read_finished().to_json()  # run.json as written
    assert [m for m, v in meta["modalities"].items() if v["status"] == "finished"] == list(ALL)
    for m in OLD:
        assert meta["modalities"][m] == old_meta["modalities"][m]
    assert meta["modalities"]["video"]["config"] == TINY.to_dict()  # the run's own SDML settings
    assert meta["modalities"]["video"]["epochs"] == TINY.epochs
    assert meta["additions"][0]["modalities"] == ["video"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["map"]) == 20 and metrics["modalities"] == list(ALL)
    for key, value in old_metrics["map"].items():
        assert metrics["map"][key] == value  # copied, not recomputed
    new_pairs = [(q, t) for q in ALL for t in ALL if q != t and "video" in (q, t)]
    assert len(new_pairs) == 8
    for q, t in new_pairs:
        assert metrics["map"][f"{q}-{t}"] == pytest.approx(from_scratch_map(run, q, t, 20), abs=1e-6)
    assert metrics["map_mean"] == pytest.approx(np.mean(list(metrics["map"].values())), abs=1e-12)

    mlflow.set_tracking_uri(meta["mlflow"]["tracking_uri"])
    client = mlflow.MlflowClient()
    parent = client.get_run(meta["mlflow"]["parent_run_id"])
    assert parent.data.metrics["map/video-image"] == pytest.approx(metrics["map"]["video-image"])
    assert parent.data.metrics["map/3d-video"] == pytest.approx(metrics["map"]["3d-video"])
    assert parent.data.metrics["map/mean"] == pytest.approx(metrics["map_mean"])
    child = client.get_run(meta["modalities"]["video"]["mlflow_run_id"])
    assert child.info.run_name == "video"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.metrics["map/audio-video"] == pytest.approx(metrics["map"]["audio-video"])
    assert [h.step for h in client.get_metric_history(child.info.run_id, "loss/val_label")] == [1, 2, 3, 4]


def test_killed_training_leaves_the_run_unchanged(run_copy, small_xmedia, crash_after):
    before = tree_hashes(run_copy)
    req = AddRequest(str(run_copy), ("video",), dataset_uri=small_xmedia, show_progress=False,
                     resources=ResourceConfig(max_restarts=0), tracking=TrackingConfig(enabled=False))
    crash_after({"video": 2})  # the actor hard-crashes after its epoch-2 checkpoint
    with pytest.raises(RunStateError, match=r"training of video died .*is unchanged"):
        add_modalities(req)
    assert tree_hashes(run_copy) == before
    store = RunStore(run_copy)
    assert store.read_finished().finished_modalities() == list(OLD)


def test_failed_commit_is_rolled_back(run_copy, small_xmedia, monkeypatch):
    before = tree_hashes(run_copy)
    seen = {}
    real_write = RunStore.write

    def failing_write(self, meta):  # the commit: folder and metrics must already be in place
        seen["folder"] = (self.root / "modalities" / "video" / "model.pt").is_file()
        seen["pairs"] = len(json.loads(self.metrics_path.read_text())["map"])
        old_plots = {k[6:]: v for k, v in before.items() if k.startswith("plots/")}
        seen["plots"] = tree_hashes(self.plots_dir) != old_plots
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunStore, "write", failing_write)
    req = AddRequest(str(run_copy), ("video",), dataset_uri=small_xmedia, show_progress=False,
                     tracking=TrackingConfig(enabled=False))
    with pytest.raises(OSError, match="No space left"):
        add_modalities(req)
    assert seen == {"folder": True, "pairs": 20, "plots": True}  # run.json is written last
    monkeypatch.setattr(RunStore, "write", real_write)
    assert tree_hashes(run_copy) == before  # byte-identical again, staging gone


def test_kill_before_run_json_then_add_again_from_tables_with_replace(run_copy, small_xmedia, tmp_path,
                                                                     monkeypatch):
    before = tree_hashes(run_copy)
    old_metrics = json.loads((run_copy / "metrics.json").read_text())
    original_parent = json.loads((run_copy / "run.json").read_text())["mlflow"]["parent_run_id"]

    # A kill right before the run.json commit: nothing after that point runs (no rollback, no cleanup).
    def killed(self, meta):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(RunStore, "write", killed)
        mp.setattr(staging.Commit, "rollback", lambda self: None)
        mp.setattr(staging.Staging, "remove", lambda self: None)
        with pytest.raises(KeyboardInterrupt):
            add_modalities(AddRequest(str(run_copy), ("video",), dataset_uri=small_xmedia,
                                      show_progress=False, tracking=TrackingConfig(enabled=False)))
    after_kill = tree_hashes(run_copy)
    assert after_kill["run.json"] == before["run.json"]
    assert_untouched_except_commit(before, after_kill)
    store = RunStore(run_copy)
    assert store.read_finished().finished_modalities() == list(OLD)  # loads, without video
    assert (run_copy / "modalities" / "video" / "model.pt").is_file()  # present but not listed
    assert (run_copy / ".staging").is_dir()

    # Next job: video and a retrained 3d from loose tables, in parallel actors.
    ds = open_dataset(small_xmedia, validate=False)
    tables = []
    for m in ("video", "3d"):
        parts = {s: ds.read_split(m, s) for s in ("train", "val", "test")}
        path = str(tmp_path / f"{m}.parquet")
        write_modality_table(path, np.concatenate([p.ids for p in parts.values()]),
                             np.concatenate([[s] * len(p) for s, p in parts.items()]),
                             np.concatenate([p.labels for p in parts.values()]),
                             np.concatenate([p.features for p in parts.values()]))
        tables.append(path)
    old_3d_model = (run_copy / "modalities" / "3d" / "model.pt").read_bytes()
    req = AddRequest(str(run_copy), ("video", "3d"), table_paths=tuple(tables), replace=True,
                     overrides=ModalityOverrides({"3d": {"seed": 7}}), show_progress=False,
                     tracking=TrackingConfig(f"sqlite:///{tmp_path}/other.db", "elsewhere"),
                     keep_checkpoints=True)
    summary = add_modalities(req)
    assert sorted(summary.results) == ["3d", "video"]
    assert summary.training_state.startswith("kept (--keep-checkpoints): ")
    assert all(store.checkpoint_path(m).is_file() for m in ("video", "3d"))  # moved in with the models
    assert not (run_copy / ".staging").exists()
    after = tree_hashes(run_copy)
    for path, digest in before.items():
        if not path.startswith(("modalities/3d/", "plots/")) and path not in REWRITTEN:
            assert after[path] == digest, path
    assert (run_copy / "modalities" / "3d" / "model.pt").read_bytes() != old_3d_model
    meta = store.read_finished().to_json()
    assert sorted(m for m, v in meta["modalities"].items() if v["status"] == "finished") == sorted(ALL)
    assert meta["modalities"]["3d"]["config"]["seed"] == 7
    assert meta["modalities"]["video"]["source"] == {"table": tables[0]}
    assert meta["additions"][-1]["replaced"] == ["3d"]
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert len(metrics["map"]) == 20
    for q in ALL:
        for t in ALL:
            if q == t:
                continue
            key = f"{q}-{t}"
            if {"3d", "video"} & {q, t}:
                assert metrics["map"][key] == pytest.approx(from_scratch_map(run_copy, q, t, 20), abs=1e-6)
            else:
                assert metrics["map"][key] == old_metrics["map"][key]
    # Another tracking URI: a new parent run there, linking to the run's own parent. run_copy is a
    # copy of the trained run (another directory), so it then adopts that parent as its own.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")
    runs = mlflow.search_runs(experiment_names=["elsewhere"], output_format="list")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["xmr.extends_parent_run_id"] == original_parent
    assert meta["mlflow"]["parent_run_id"] == parent.info.run_id
    assert meta["mlflow"]["run_dir"] == str(run_copy)
    assert parent.data.metrics["map/mean"] == pytest.approx(metrics["map_mean"])
    assert sorted(r.info.run_name for r in runs if r is not parent) == ["3d", "video"]


def test_real_mfeat_five_views_then_the_sixth(tmp_path, ray_local, monkeypatch):
    from scalable_xmr.data.modality.mfeat import convert_mfeat

    monkeypatch.chdir(tmp_path)  # the default MLflow store would be ./mlflow.db

    data = str(tmp_path / "mfeat")
    convert_mfeat(data, seed=0)
    five = ("fou", "fac", "kar", "pix", "zer")
    run = tmp_path / "run"
    train_sdml(TrainRequest(run_dir=str(run), dataset_uri=data, sdml=TINY, modalities=five,
                            show_progress=False, tracking=TrackingConfig(enabled=False)))
    before = tree_hashes(run)
    old = json.loads((run / "metrics.json").read_text())["map"]
    summary = add_modalities(AddRequest(str(run), ("mor",), dataset_uri=data, show_progress=False))
    assert_untouched_except_commit(before, tree_hashes(run))
    metrics = summary.metrics
    assert len(metrics.map) == 30 and metrics.modalities == [*five, "mor"]
    assert all(metrics.map[k] == v for k, v in old.items())
    new = {k: v for k, v in metrics.map.items() if "mor" in k.split("-")}
    assert len(new) == 10
    for key in ("mor-pix", "fou-mor"):
        q, t = key.split("-")
        assert new[key] == pytest.approx(from_scratch_map(run, q, t, 10), abs=1e-6)
    # 10 balanced digits: retrieval at chance scores about 0.1; the added view must do better.
    assert np.mean(list(new.values())) > 0.15
    assert not (tmp_path / "mlflow.db").exists()  # an untracked run stays untracked (no default store)
