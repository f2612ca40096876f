"""Errors raised inside Ray actors reach the CLI as the driver's one line and exit 2 (#14 item 3),
and run.json records what happened to each modality: finished ones stay finished, the one that
failed is marked failed with its line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from one_line import fails_one_line

from scalable_xmr.cli.branch import main as pairs_main
from scalable_xmr.cli.train import main as train_main
from scalable_xmr.store import torchfile
from scalable_xmr.store.run_store import RunStore

TINY = ["--epochs", "2", "--dim", "32", "--batch-size", "20", "--no-tracking", "--no-progress"]


def _copy_with_nan(src: str, dst, modality: str, row: int):
    """A copy of the dataset whose ``modality`` table has NaN in one feature of row ``row``."""
    shutil.copytree(src, dst)
    path = dst / f"{modality}.parquet"
    table = pq.read_table(path)
    feats = table.column("features").combine_chunks()
    dim = feats.type.list_size if hasattr(feats.type, "list_size") else len(feats[0])
    values = feats.flatten().to_numpy().copy()
    values[row * dim + 3] = np.nan
    new = pa.FixedSizeListArray.from_arrays(pa.array(values), dim) if hasattr(feats.type, "list_size") \
        else pa.ListArray.from_arrays(feats.offsets, pa.array(values))
    pq.write_table(table.set_column(table.column_names.index("features"), "features", new), path)
    return str(dst), str(table.column("id")[row])


def test_bad_features_are_one_line_before_anything_is_written(tmp_path, capsys, small_xmedia, ray_local):
    data, bad_id = _copy_with_nan(small_xmedia, tmp_path / "data", "audio", row=5)
    run = tmp_path / "run"
    fails_one_line(train_main, capsys, ["--data", data, "--run", str(run), "--modality", "image",
                                        "--modality", "audio", "--strategy", "serial", *TINY],
                   f"{data}/audio.parquet: column 'features' has NaN or inf at row id {bad_id!r}")
    assert not run.exists()


def test_a_non_finite_loss_in_an_actor_is_one_line_naming_modality_epoch_and_term(
        tmp_path, capsys, small_xmedia, ray_local):
    best = tmp_path / "best.json"  # an absurd learning rate for one modality only
    best.write_text(json.dumps({"model": "sdml", "per_modality": {"audio": {"config": {"lr": 1e30}}}}))
    run = tmp_path / "run"
    fails_one_line(train_main, capsys, ["--data", small_xmedia, "--run", str(run), "--modality", "image",
                                        "--modality", "audio", "--strategy", "serial", "--config", str(best),
                                        *TINY], "modality 'audio': the ")
    meta = RunStore(run).read()
    assert meta.modalities["audio"]["status"] == "failed"
    assert "not finite at epoch" in meta.modalities["audio"]["error"]
    assert meta.modalities["image"]["status"] == "finished"


def test_corrupt_checkpoints_found_on_resume_are_one_line_naming_the_file(tmp_path, capsys, small_xmedia,
                                                                           ray_local):
    run = tmp_path / "run"
    argv = ["--data", small_xmedia, "--run", str(run), "--modality", "image", "--checkpoint-every", "1",
            "--keep-checkpoints", *TINY]  # the finished run keeps the checkpoints damaged below
    assert train_main(argv) == 0
    store = RunStore(run)
    meta = store.read()  # pretend image never finished, then damage both of its checkpoints
    meta.modalities["image"]["status"] = "pending"
    meta.status = "failed"
    store.write(meta)
    ckpt = store.checkpoint_path("image")
    for path in (ckpt, torchfile.previous(ckpt)):
        raw = bytearray(path.read_bytes())
        raw[200:264] = bytes(64)
        path.write_bytes(bytes(raw))
    fails_one_line(train_main, capsys, [*argv, "--resume"], f"{ckpt}: checksum mismatch")
    assert store.read().modalities["image"]["status"] == "failed"


def test_a_branch_member_error_in_an_actor_is_one_line(tmp_path, capsys, small_pairs, ray_local):
    run = tmp_path / "run"
    argv = ["--model", "vse", "--data", small_pairs, "--run", str(run), "--epochs", "2",
            "--checkpoint-every", "1", "--keep-checkpoints", "--no-tracking", "--no-progress"]
    assert pairs_main(argv) == 0
    store = RunStore(run)
    meta = store.read()
    name = next(iter(meta.members))
    meta.members[name]["status"] = "pending"
    meta.status = "failed"
    store.write(meta)
    ckpt = store.member_dir(name) / "checkpoints" / "last.pt"
    for path in (ckpt, torchfile.previous(ckpt)):
        if path.exists():
            raw = bytearray(path.read_bytes())
            raw[200:264] = bytes(64)
            path.write_bytes(bytes(raw))
    fails_one_line(pairs_main, capsys, [*argv, "--resume"], f"{ckpt}: checksum mismatch")
    assert store.read().members[name]["status"] == "failed"
