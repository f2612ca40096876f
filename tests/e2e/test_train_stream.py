"""``xmr train --workers-per-modality 2 --stream`` on the session's local Ray (#26 item 2): each
modality's table streams through Ray Data to two Ray Train workers; the run leaves the files an
in-memory run leaves, records the stream setting, and its test mAP is a trained model's. With
W = 1 (``--stream`` alone) each modality streams in its actor instead, to the same files."""

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
def test_streaming_modalities_train_the_run_with_two_workers_or_in_the_actor(tmp_path, capsys, small_xmedia,
                                                                           ray_local):
    runs = {"memory": tmp_path / "memory", "stream": tmp_path / "stream", "stream1": tmp_path / "stream1"}
    assert train_main(_argv(runs["memory"], small_xmedia)) == 0, capsys.readouterr()
    assert train_main(_argv(runs["stream"], small_xmedia, "--workers-per-modality", "2", "--stream")) == 0, \
        capsys.readouterr()
    err = capsys.readouterr().err
    assert "workers: image 2, text 2 (DDP, gloo; 0.5 CPU each; streamed by Ray Data, 1 CPU;" in err, err
    assert train_main(_argv(runs["stream1"], small_xmedia, "--stream")) == 0, capsys.readouterr()
    err = capsys.readouterr().err
    assert "workers: image 1, text 1 (the modality's actor; 1 CPU; streamed by Ray Data, 1 CPU;" in err, err
    for name, workers in (("stream", 2), ("stream1", 1)):
        meta = json.loads((runs[name] / "run.json").read_text())
        assert meta["status"] == "finished"
        for m in MODALITIES:
            entry = meta["modalities"][m]
            assert entry["status"] == "finished" and entry["workers"] == workers and entry["stream"] is True
            log = json.loads(RunStore(runs[name]).train_log_path(m).read_text())
            assert log["epochs"] == 3 and np.isfinite([h["loss_train"] for h in log["history"]]).all()
    files = {k: sorted(p.relative_to(r).as_posix() for p in r.rglob("*") if p.is_file())
             for k, r in runs.items()}
    assert files["stream"] == files["memory"] == files["stream1"]  # no training state left, the same outputs
    for name in ("stream", "stream1"):
        for split in ("val", "test"):  # every row embedded, with its labels
            for m in MODALITIES:
                ids_m, labels_m, _ = RunStore(runs["memory"]).read_embeddings(m, split, 20)
                ids_s, labels_s, emb = RunStore(runs[name]).read_embeddings(m, split, 20)
                assert sorted(ids_s) == sorted(ids_m) and np.isfinite(emb).all()
                order = {i: k for k, i in enumerate(ids_m)}
                np.testing.assert_array_equal(labels_s, labels_m[[order[i] for i in ids_s]])
        maps = json.loads((runs[name] / "metrics.json").read_text())["map"]
        assert set(maps) == {"image-text", "text-image"} and all(0 < v <= 1 for v in maps.values())
