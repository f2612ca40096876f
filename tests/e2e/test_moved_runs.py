"""A run directory that was moved or copied (#14 defect 7): its footer says where the MLflow record
was made, and a copy never adds children under the original's MLflow parent run."""

from __future__ import annotations

import shutil

import mlflow

from scalable_xmr.cli.extend import main as add_main
from scalable_xmr.cli.train import main as train_main
from scalable_xmr.store.run_store import RunStore

TINY = ["--epochs", "1", "--dim", "32", "--batch-size", "20", "--no-progress"]


def _children(uri: str, parent: str) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([r.experiment_id for r in client.search_experiments()])
    return sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent)


def test_a_copied_run_gets_its_own_parent_and_a_moved_run_says_so(tmp_path, capsys, small_xmedia, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    original = tmp_path / "original"
    assert train_main(["--data", small_xmedia, "--run", str(original), "--modality", "image", "--modality",
                       "text", "--tracking-uri", uri, *TINY]) == 0
    first = RunStore(original).read().mlflow
    assert first["run_dir"] == str(original)
    assert _children(uri, first["parent_run_id"]) == ["image", "text"]

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    capsys.readouterr()
    assert add_main(["--run", str(copy), "--modality", "audio", "--data", small_xmedia, "--epochs", "1",
                     "--batch-size", "20", "--no-progress"]) == 0
    assert _children(uri, first["parent_run_id"]) == ["image", "text"]  # the original is untouched
    adopted = RunStore(copy).read().mlflow
    assert adopted["run_dir"] == str(copy) and adopted["parent_run_id"] != first["parent_run_id"]
    assert _children(uri, adopted["parent_run_id"]) == ["audio"]
    tags = mlflow.MlflowClient(tracking_uri=uri).get_run(adopted["parent_run_id"]).data.tags
    assert tags["xmr.copied_from"] == str(original)
    assert RunStore(original).read().mlflow == first

    moved = tmp_path / "moved"
    shutil.move(original, moved)
    capsys.readouterr()
    assert train_main(["--data", small_xmedia, "--run", str(moved), "--modality", "image", "--modality",
                       "text", "--resume", "--tracking-uri", uri, *TINY]) == 0
    out = capsys.readouterr().out
    assert f"run {first['parent_run_id']}) [recorded when the run was at {original}]" in out
