"""load_run / TrainedRun on a small trained SDML run: encode, stored embeddings, search, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import scalable_xmr
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.errors import InputError, MissingError, RunStateError
from scalable_xmr.serving import load_run
from scalable_xmr.store import torchfile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def numpy_encode(run_dir: str, modality: str, x: np.ndarray) -> np.ndarray:
    """The SDML encoder written out in NumPy from model.pt (float64): standardise with the stored
    train statistics, Linear-ReLU-Linear-ReLU-Linear, L2-normalise (docs/models.md)."""
    sd = {k: v.double().numpy() for k, v in torchfile.load(f"{run_dir}/modalities/{modality}/model.pt")
          ["state_dict"].items()}
    h = (x.astype(np.float64) - sd["feature_mean"]) / sd["feature_std"]
    for i, layer in enumerate((0, 2, 4)):
        h = h @ sd[f"encoder.{layer}.weight"].T + sd[f"encoder.{layer}.bias"]
        if i < 2:
            h = np.maximum(h, 0.0)
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def test_load_run_describes_the_run(sdml_run):
    run = scalable_xmr.load_run(sdml_run)
    assert run.kind == "sdml"
    assert run.modalities == ["image", "text", "audio"]
    assert run.embedding_dim == 32
    assert run.input_dim("text") == 80
    meta = json.loads(open(f"{sdml_run}/run.json").read())
    assert run.fingerprint == meta["projection"]["sha256"]


def test_encode_applies_the_stored_normaliser_and_encoder(sdml_run, small_xmedia):
    run = load_run(sdml_run, device="cpu")
    split = open_dataset(small_xmedia).read_split("image", "test")
    emb = run.encode("image", split.features, batch_size=7)  # several batches
    assert emb.dtype == np.float32 and emb.shape == (len(split), 32)
    np.testing.assert_allclose(emb, numpy_encode(sdml_run, "image", split.features), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # ... and equals what the trainer stored for the same rows
    ids, labels, stored = run.embeddings("image", "test")
    assert list(ids) == list(split.ids)
    np.testing.assert_allclose(emb, stored, atol=1e-5)
    np.testing.assert_array_equal(labels, split.labels)


def test_search_equals_brute_force_numpy(sdml_run, small_xmedia):
    run = load_run(sdml_run)
    text = open_dataset(small_xmedia).read_split("text", "test")
    g_ids, _, g_emb = run.embeddings("image", "test")
    result = run.search("text", text.features[:5], "image", k=8, chunk=7)
    q = numpy_encode(sdml_run, "text", text.features[:5])
    ref = q @ g_emb.astype(np.float64).T  # (5, n_image)
    pos = {i: n for n, i in enumerate(g_ids)}
    for row in range(5):
        rows = [pos[i] for i in result.ids[row]]
        np.testing.assert_allclose(result.scores[row], ref[row, rows], atol=1e-5)
        assert np.all(np.diff(result.scores[row]) <= 1e-6)
        assert np.delete(ref[row], rows).max() <= result.scores[row, -1] + 1e-5
    assert len(result.rows()) == 40 and result.rows()[0]["rank"] == 1


def test_a_stored_item_finds_itself_first_in_its_own_modality(sdml_run):
    run = load_run(sdml_run)
    ids, labels, _ = run.embeddings("audio", "test")
    result = run.search("audio", list(ids[:6]), "audio", k=3)
    assert list(result.ids[:, 0]) == list(ids[:6])
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)
    assert list(result.query_ids) == list(ids[:6])


def test_cross_modal_search_by_id_uses_the_stored_embedding(sdml_run):
    run = load_run(sdml_run)
    ids, _, emb = run.embeddings("image", "val")
    by_id = run.search("image", [ids[3]], "text", k=5, split="val")
    _, _, text_emb = run.embeddings("text", "val")
    ref = emb[3].astype(np.float64) @ text_emb.astype(np.float64).T
    np.testing.assert_allclose(by_id.scores[0], np.sort(ref)[::-1][:5], atol=1e-5)


def test_a_file_uri_is_the_local_run(sdml_run):
    """Object-storage URIs go through the run store's mirror (store/remote.py, tested there);
    a ``file://`` URI is the local directory."""
    run = load_run(f"file://{sdml_run}")
    assert run.store.root == load_run(sdml_run).store.root
    assert run.location == sdml_run


@pytest.mark.parametrize("call, error, match", [
    (lambda r: r.encode("lidar", np.zeros((1, 3))), InputError,
     r"modality: unknown modality 'lidar' \(run .* has: image, text, audio\)"),
    (lambda r: r.search("image", np.zeros((1, 64)), "smell", k=1), InputError,
     r"target_modality: unknown modality 'smell'"),
    (lambda r: r.encode("image", np.zeros((2, 63))), InputError,
     r"features \(image\): expected shape \(n, 64\) with n >= 1, got \(2, 63\)"),
    (lambda r: r.encode("text", np.full((1, 80), np.nan)), InputError,
     r"features \(text\): NaN or inf at row 0, column 0"),
    (lambda r: r.search("image", np.zeros((1, 64)), "text", k=0), InputError,
     r"k: must be an integer from 1 to the gallery size 30, got 0"),
    (lambda r: r.search("image", np.zeros((1, 64)), "text", k=31), InputError,
     r"k: must be an integer from 1 to the gallery size 30, got 31"),
    (lambda r: r.search("image", ["no-such-id"], "text", k=1), InputError,
     r"id: 'no-such-id' is not a stored 'image' item of split 'test'"),
    (lambda r: r.embeddings("image", "train"), MissingError, r"no stored 'train' embeddings"),
])
def test_bad_input_is_one_line_naming_field_and_value(sdml_run, call, error, match):
    with pytest.raises(error, match=match) as info:
        call(load_run(sdml_run))
    assert "\n" not in str(info.value)


def test_an_unfinished_run_is_refused(sdml_run, tmp_path):
    copy = shutil.copytree(sdml_run, tmp_path / "run")
    meta = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    with pytest.raises(RunStateError, match=r"not a finished run \(status 'running'\)"):
        load_run(copy)


def test_a_missing_run_is_named(tmp_path):
    with pytest.raises(MissingError, match="run directory not found"):
        load_run(tmp_path / "nope")


def test_an_sdml_run_has_no_model_choice(sdml_run):
    with pytest.raises(InputError, match=r"model: an SDML run has one network per modality; got 'vse'"):
        load_run(sdml_run, model="vse")


def test_encode_runs_on_the_device_asked_for(sdml_run):
    run = load_run(sdml_run, device="cpu")
    assert next(run.encoder("image").parameters()).device == torch.device("cpu")
