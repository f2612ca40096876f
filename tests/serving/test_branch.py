"""Search with a pairs run's branch models: VSE (embeddings), MMCA (i0·c0 then S), MTFN (fusion).

The reference is the evaluator's own image x caption score matrix (``branch.scoring``), which
training and R@K use: a search must return the top of its rows (image query) or columns (text).
"""

from __future__ import annotations

import numpy as np
import pytest

from scalable_xmr.branch.member import load_branch_model
from scalable_xmr.branch.scoring import similarity_matrix
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.serving import load_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(run_dir: str, data: str, model: str) -> np.ndarray:
    import torch

    net, _ = load_branch_model(f"{run_dir}/models/{model}/model.pt", torch.device("cpu"))
    return similarity_matrix(net, open_paired_dataset(data).read_split("test"), chunk=5).numpy()


def _assert_top(scores: np.ndarray, ref_row: np.ndarray, rows: list[int]) -> None:
    np.testing.assert_allclose(scores, ref_row[rows], atol=1e-4)
    assert np.delete(ref_row, rows).max() <= scores[-1] + 1e-4


@pytest.mark.parametrize("model", ["vse", "mmca", "mtfn"])
def test_branch_search_returns_the_top_of_the_evaluators_scores(pairs_run, model):
    run_dir, data = pairs_run
    run = load_run(run_dir, model=model, device="cpu")
    assert run.kind == "pairs" and run.modalities == ["image", "text"]
    split = open_paired_dataset(data).read_split("test")
    ref = _reference(run_dir, data, model)  # (n_images, n_captions)
    img_pos = {i: n for n, i in enumerate(split.image_ids)}
    cap_pos = {c: n for n, c in enumerate(split.caption_ids)}
    i2t = run.search("image", list(split.image_ids[:3]), "text", k=5)
    for q in range(3):
        _assert_top(i2t.scores[q], ref[q], [cap_pos[c] for c in i2t.ids[q]])
    t2i = run.search("text", list(split.caption_ids[:4]), "image", k=4)
    for q in range(4):
        _assert_top(t2i.scores[q], ref[:, q], [img_pos[i] for i in t2i.ids[q]])


def test_branch_queries_by_features_equal_queries_by_id(pairs_run):
    run_dir, data = pairs_run
    run = load_run(run_dir, model="mmca")
    split = open_paired_dataset(data).read_split("test")
    tokens = [t[:n].tolist() for t, n in zip(split.tokens[:2], split.lengths[:2], strict=True)]
    by_features = run.search("text", tokens, "image", k=3)
    by_id = run.search("text", list(split.caption_ids[:2]), "image", k=3)
    np.testing.assert_array_equal(by_features.ids, by_id.ids)
    np.testing.assert_allclose(by_features.scores, by_id.scores, atol=1e-5)


def test_vse_embeddings_are_unit_vectors(pairs_run):
    run = load_run(pairs_run[0], model="vse")
    ids, labels, emb = run.embeddings("image", "test")
    assert labels is None and len(ids) == 12
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kwargs, call, match", [
    ({}, None, r"model: the run .* has 3 models \(vse, mmca, mtfn\); choose one"),
    ({"model": "clip"}, None, r"model: unknown model 'clip' \(run .* has: vse, mmca, mtfn\)"),
    ({"model": "vse"}, lambda r: r.search("image", ["img000040"], "image", k=1),
     r"target_modality: a vse run searches image<->text"),
    ({"model": "vse"}, lambda r: r.encode("text", [[1, 2, 999]]),
     r"features \(text\): row 0 must be a non-empty list of token ids in 1..39"),
    ({"model": "vse"}, lambda r: r.encode("image", np.zeros((2, 5))),
     r"features \(image\): expected shape \(n, 8\)"),
    ({"model": "mtfn"}, lambda r: r.search("image", np.zeros((1, 8)), "text", k=61),
     r"k: must be an integer from 1 to the gallery size 60, got 61"),
])
def test_branch_bad_input(pairs_run, kwargs, call, match):
    with pytest.raises(InputError, match=match):
        run = load_run(pairs_run[0], **kwargs)
        call(run)


def test_index_and_serve_refuse_models_without_an_embedding(pairs_run, tmp_path):
    """Checked before Ray is used: MTFN/MMCA have no per-item embedding an index could hold, and
    `xmr serve` serves SDML runs."""
    from scalable_xmr.serving import app
    from scalable_xmr.serving.index import build_index

    with pytest.raises(InputError, match=r"--run: mtfn scores pairs \(no per-item embedding to index\)"):
        build_index(pairs_run[0], "image", str(tmp_path / "t.parquet"), str(tmp_path / "i"), model="mtfn")
    with pytest.raises(InputError, match=r"`xmr serve` serves SDML runs \(one common space\); a 'pairs' run"):
        app.deploy(pairs_run[0], model="vse")


def test_the_index_encoder_reads_token_captions(pairs_run):
    """The Ray Data callable of `xmr index`, called directly on one Arrow batch of a VSE run's
    captions: its embeddings are the run's own for those captions."""
    import pyarrow as pa

    from scalable_xmr.serving.index import BatchEncoder

    run_dir, data = pairs_run
    split = open_paired_dataset(data).read_split("test")
    tokens = [t[:n].tolist() for t, n in zip(split.tokens, split.lengths, strict=True)]
    batch = pa.table({"id": list(split.caption_ids), "tokens": pa.array(tokens, pa.list_(pa.int32()))})
    out = BatchEncoder(run_dir, "text", "vse", "cpu", "captions")(batch)
    assert out.column_names == ["id", "embedding"] and out.num_rows == len(tokens)
    col = out.column("embedding").combine_chunks()
    emb = col.values.to_numpy().reshape(len(col), col.type.list_size)
    ids, _, stored = load_run(run_dir, model="vse").embeddings("text", "test")
    assert out.column("id").to_pylist() == list(ids)
    np.testing.assert_allclose(emb, stored, atol=1e-5)
