"""``xmr train --workers-per-modality 2 --stream`` on the session's local Ray (#26 item 2): each
modality's table streams through Ray Data to two Ray Train workers; the run leaves the files an
in-memory run leaves, records the stream setting, and its test mAP is a trained model's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalable_xmr.cli.train import main as train_main
from scalable_xmr.store.run_store import RunStore

MODALITIES = ("image", "text")


def _argv(run, data, *extra):
    return ["--data", data, "--run", str(run), "--no-tracking", "--no-progress", "--dim", "32",
            "--batch-size", "30", "--epochs", "3", "--checkpoint-every", "2", "--lr", "1e-3",
            *[a for m in MODALITIES for a in ("--modality", m)], *extra]


@pytest.mark.slow
def test_two_streaming_workers_per_modality_train_the_run(tmp_path, capsys, small_xmedia, ray_local):
    runs = {"memory": tmp_path / "memory", "stream": tmp_path / "stream"}
    assert train_main(_argv(runs["memory"], small_xmedia)) == 0, capsys.readouterr()
    assert train_main(_argv(runs["stream"], small_xmedia, "--workers-per-modality", "2", "--stream")) == 0, \
        capsys.readouterr()
    err = capsys.readouterr().err
    assert "workers: image 2, text 2 (DDP, gloo; 0.5 CPU each; streamed by Ray Data, 1 CPU;" in err, err
    meta = json.loads((runs["stream"] / "run.json").read_text())
    assert meta["status"] == "finished"
    for m in MODALITIES:
        entry = meta["modalities"][m]
        assert entry["status"] == "finished" and entry["workers"] == 2 and entry["stream"] is True
        log = json.loads(RunStore(runs["stream"]).train_log_path(m).read_text())
        assert log["epochs"] == 3 and np.isfinite([h["loss_train"] for h in log["history"]]).all()
    files = {k: sorted(p.relative_to(r).as_posix() for p in r.rglob("*") if p.is_file())
             for k, r in runs.items()}
    assert files["stream"] == files["memory"]  # no training state left, the same outputs
    for split in ("val", "test"):  # every row embedded, with its labels
        for m in MODALITIES:
            ids_m, labels_m, _ = RunStore(runs["memory"]).read_embeddings(m, split, 20)
            ids_s, labels_s, emb = RunStore(runs["stream"]).read_embeddings(m, split, 20)
            assert sorted(ids_s) == sorted(ids_m) and np.isfinite(emb).all()
            order = {i: k for k, i in enumerate(ids_m)}
            np.testing.assert_array_equal(labels_s, labels_m[[order[i] for i in ids_s]])
    maps = json.loads((runs["stream"] / "metrics.json").read_text())["map"]
    assert set(maps) == {"image-text", "text-image"} and all(0 < v <= 1 for v in maps.values())
