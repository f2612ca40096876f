"""Bad input to the SDML job that is only seen once Ray is up: one line, nothing written."""

import json

from one_line import fails_one_line

from scalable_xmr.cli.train import main as train_main
from scalable_xmr.store.projection import create_projection, save_projection


def _fails(capsys, argv, message):
    fails_one_line(train_main, capsys, argv, message)


def test_projection_with_other_class_count(tmp_path, capsys, small_xmedia, ray_local):
    save_projection(tmp_path / "p.arrow", create_projection(32, 7, seed=0))
    _fails(capsys, ["--data", small_xmedia, "--run", str(tmp_path / "run"), "--dim", "32",
                    "--projection", str(tmp_path / "p.arrow"), "--no-tracking"],
           "projection has n_classes 7, the dataset")
    assert not (tmp_path / "run" / "run.json").exists()


def test_finished_run_is_refused(tmp_path, capsys, small_xmedia, ray_local):
    run = tmp_path / "run"
    run.mkdir()
    meta = {"format": 1, "kind": "sdml", "status": "finished", "dataset": {"uri": "d", "name": "d"},
            "modalities": {}}
    (run / "run.json").write_text(json.dumps(meta))
    _fails(capsys, ["--data", small_xmedia, "--run", str(run), "--no-tracking"],
           "already holds a finished run; pass --resume to continue it or --overwrite")
    assert json.loads((run / "run.json").read_text()) == meta


def test_gpus_on_a_cluster_without_gpus(tmp_path, capsys, small_xmedia, ray_local):
    _fails(capsys, ["--data", small_xmedia, "--run", str(tmp_path / "run"), "--gpus-per-modality", "1",
                    "--no-tracking"], "--gpus-per-modality 1 but this Ray cluster has no GPUs (2 CPU, 0 GPU")
    assert not (tmp_path / "run").exists()
