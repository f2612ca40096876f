"""Search with a branch run's models: VSE (embeddings), MMCA (i0·c0 then S), MTFN (fusion).

The reference is the evaluator's own image x caption score matrix (``branch.scoring``), which
training and R@K use: a search must return the top of its rows (image query) or columns (text).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalable_xmr.branch.model_file import load_branch_model
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
def test_branch_search_returns_the_top_of_the_evaluators_scores(branch_run, model):
    run_dir, data = branch_run
    run = load_run(run_dir, model=model, device="cpu")
    assert run.kind == "branch" and run.modalities == ["image", "text"]
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


def test_branch_queries_by_features_equal_queries_by_id(branch_run):
    run_dir, data = branch_run
    run = load_run(run_dir, model="mmca")
    split = open_paired_dataset(data).read_split("test")
    tokens = [t[:n].tolist() for t, n in zip(split.tokens[:2], split.lengths[:2], strict=True)]
    by_features = run.search("text", tokens, "image", k=3)
    by_id = run.search("text", list(split.caption_ids[:2]), "image", k=3)
    np.testing.assert_array_equal(by_features.ids, by_id.ids)
    np.testing.assert_allclose(by_features.scores, by_id.scores, atol=1e-5)


def test_vse_embeddings_are_unit_vectors(branch_run):
    run = load_run(branch_run[0], model="vse")
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
def test_branch_bad_input(branch_run, kwargs, call, match):
    with pytest.raises(InputError, match=match):
        run = load_run(branch_run[0], **kwargs)
        call(run)


@pytest.mark.parametrize("model", ["mmca", "mtfn"])
def test_an_index_of_a_pairwise_model_searches_as_its_stored_split(branch_run, tmp_path, model):
    """MMCA and MTFN score pairs, so their index keeps what the score needs (MTFN's ṽ / t̃; MMCA's
    i0 / c0 and regions / words): the encoder's batches, read back as a gallery, rank as the stored
    split does. The Ray Data callable is called directly (no Ray here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scalable_xmr.serving.index import BatchEncoder, read_index
    from scalable_xmr.serving.preflight import FORMAT, SIDECAR

    run_dir, data = branch_run
    run = load_run(run_dir, model=model, device="cpu")
    split = open_paired_dataset(data).read_split("test")
    tokens = [t[:n].tolist() for t, n in zip(split.tokens, split.lengths, strict=True)]
    sources = {  # images as region lists (n, 3, dim), captions as token lists
        "image": pa.table({"id": list(split.image_ids), "features": pa.array(
            [r.tolist() for r in split.images], pa.list_(pa.list_(pa.float32())))}),
        "text": pa.table({"id": list(split.caption_ids), "tokens": pa.array(tokens, pa.list_(pa.int32()))})}
    for modality, source in sources.items():
        out = BatchEncoder(run_dir, modality, model, "cpu", "t")(source)
        index = tmp_path / f"{model}-{modality}"
        index.mkdir()
        pq.write_table(out, index / "part-0.parquet")
        (index / SIDECAR).write_text(json.dumps({"format": FORMAT, "modality": modality,
                                                 "fingerprint": run.fingerprint}))
        gallery = read_index(str(index), run, modality)
        query = "text" if modality == "image" else "image"
        qids = list((split.caption_ids if query == "text" else split.image_ids)[:3])
        from_index = run.search(query, qids, modality, k=4, gallery=gallery)
        stored = run.search(query, qids, modality, k=4)
        np.testing.assert_array_equal(from_index.ids, stored.ids)
        np.testing.assert_allclose(from_index.scores, stored.scores, atol=1e-5)


def test_the_index_encoder_reads_token_captions(branch_run):
    """The Ray Data callable of `xmr index`, called directly on one Arrow batch of a VSE run's
    captions: its embeddings are the run's own for those captions."""
    import pyarrow as pa

    from scalable_xmr.serving.index import BatchEncoder

    run_dir, data = branch_run
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


# ---- MMCA: exact and two-stage search (issue #21) ------------------------------------------------
def _brute_force_mmca(run_dir: str, data: str) -> np.ndarray:
    """S(I, T) of every (image, caption) pair of the test split, each pair scored on its own
    (a 1 x 1 call of the model's S), in float64: the reference the chunked search must match."""
    import torch

    net, _ = load_branch_model(f"{run_dir}/models/mmca/model.pt", torch.device("cpu"))
    net.eval()  # no dropout: the scores search ranks by
    split = open_paired_dataset(data).read_split("test")
    images = torch.as_tensor(split.images, dtype=torch.float32)
    out = np.zeros((len(split.image_ids), len(split.caption_ids)), np.float64)
    with torch.no_grad():
        for c in range(out.shape[1]):
            tokens = torch.as_tensor(split.tokens[c : c + 1, : split.lengths[c]], dtype=torch.long)
            txt = net.encode_texts(tokens, torch.as_tensor(split.lengths[c : c + 1], dtype=torch.long))
            for i in range(out.shape[0]):
                out[i, c] = float(net.similarity(net.encode_images(images[i : i + 1]), txt)[0, 0])
    return out


def _ranked(row: np.ndarray, k: int) -> np.ndarray:
    """The k best columns of one score row, best first, ties to the lower index."""
    return np.lexsort((np.arange(len(row)), -row))[:k]


def _assert_same_ranking(ids, scores, ref_ids, ref_scores, atol=1e-4):
    """Equal rankings, except that items whose scores differ by less than ``atol`` (a near tie,
    where float summation order may decide) may trade places."""
    np.testing.assert_allclose(scores, ref_scores, atol=atol)
    for a, b, sa, sb in zip(ids, ref_ids, scores, ref_scores, strict=True):
        assert a == b or abs(sa - sb) < atol, (ids, ref_ids)


def test_mmca_exact_search_equals_a_brute_force_full_s_ranking(branch_run):
    run_dir, data = branch_run
    run = load_run(run_dir, model="mmca", device="cpu")
    split = open_paired_dataset(data).read_split("test")
    ref = _brute_force_mmca(run_dir, data)  # (12 images, 60 captions)
    t2i = run.search("text", list(split.caption_ids[:6]), "image", k=5, chunk=5)
    assert t2i.mode.startswith("exact (MMCA full S of every item: 12 cross-attention passes")
    for q in range(6):
        top = _ranked(ref[:, q], 5)
        _assert_same_ranking(list(t2i.ids[q]), t2i.scores[q], list(split.image_ids[top]), ref[top, q])
    i2t = run.search("image", list(split.image_ids[:3]), "text", k=7, chunk=16)
    for q in range(3):
        top = _ranked(ref[q], 7)
        _assert_same_ranking(list(i2t.ids[q]), i2t.scores[q], list(split.caption_ids[top]), ref[q, top])


def test_mmca_two_stage_with_the_whole_gallery_is_the_exact_search(branch_run):
    run_dir, data = branch_run
    run = load_run(run_dir, model="mmca", device="cpu")
    split = open_paired_dataset(data).read_split("test")
    queries = list(split.caption_ids[:8])
    exact = run.search("text", queries, "image", k=6)
    staged = run.search("text", queries, "image", k=6, depth=12)
    assert staged.mode.startswith("two-stage, approximate (top 12 of 12 by i0·c0")
    np.testing.assert_array_equal(staged.ids, exact.ids)
    np.testing.assert_allclose(staged.scores, exact.scores, atol=1e-5)


def test_mmca_two_stage_ranks_the_first_stage_candidates_by_s(branch_run):
    """depth = 4 < gallery: the results are the i0·c0 top 4, ordered by the brute-force S."""
    import torch

    run_dir, data = branch_run
    run = load_run(run_dir, model="mmca", device="cpu")
    split = open_paired_dataset(data).read_split("test")
    net, _ = load_branch_model(f"{run_dir}/models/mmca/model.pt", torch.device("cpu"))
    net.eval()
    ref = _brute_force_mmca(run_dir, data)
    with torch.no_grad():
        i0 = net.encode_images(torch.as_tensor(split.images, dtype=torch.float32))[0].double().numpy()
        c0 = net.encode_texts(torch.as_tensor(split.tokens, dtype=torch.long),
                              torch.as_tensor(split.lengths, dtype=torch.long))[0].double().numpy()
    first = i0 @ c0.T  # (images, captions): the first stage's score
    found = run.search("text", list(split.caption_ids[:5]), "image", k=3, depth=4)
    for q in range(5):
        cand = _ranked(first[:, q], 4)
        top = cand[_ranked(ref[cand, q], 3)]
        _assert_same_ranking(list(found.ids[q]), found.scores[q], list(split.image_ids[top]), ref[top, q])


@pytest.mark.parametrize("model, depth, match", [
    ("mmca", 0, r"depth: must be an integer from k = 3 to the gallery size 12, got 0"),
    ("mmca", 2, r"depth: must be an integer from k = 3 to the gallery size 12, got 2"),
    ("mmca", 13, r"depth: must be an integer from k = 3 to the gallery size 12, got 13"),
    ("mmca", 4.5, r"depth: must be an integer from k = 3 .* got 4.5"),
    ("vse", 5, r"depth: only MMCA runs have a two-stage search; a vse search is exact \(got depth=5\)"),
    ("mtfn", 5, r"depth: only MMCA runs have a two-stage search; a mtfn search is exact"),
])
def test_bad_depth(branch_run, model, depth, match):
    run = load_run(branch_run[0], model=model, device="cpu")
    with pytest.raises(InputError, match=match):
        run.search("text", np.asarray([[1, 2, 3]]), "image", k=3, depth=depth)


def test_search_results_name_their_ranking(branch_run):
    for model, mode in (("vse", "exact (cosine of stored embeddings)"),
                        ("mtfn", "exact (MTFN fusion score of every item: 12 fusion passes per query)")):
        run = load_run(branch_run[0], model=model, device="cpu")
        assert run.search("text", np.asarray([[1, 2, 3]]), "image", k=2).mode == mode


def test_a_run_of_the_old_kind_pairs_is_served_as_a_branch_run(branch_run, tmp_path):
    """run.json of a branch run written before the kind was renamed says "pairs" (README
    "Upgrading"): it loads as a branch run and searches as before; the file is not rewritten."""
    import shutil

    run_dir, data = branch_run
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    meta = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({**meta, "kind": "pairs"}, indent=2))
    before = (old / "run.json").read_text()
    run = load_run(str(old), model="vse", device="cpu")
    assert run.kind == "branch"
    ids = list(open_paired_dataset(data).read_split("test").image_ids[:2])
    new = load_run(run_dir, model="vse", device="cpu")
    np.testing.assert_array_equal(run.search("image", ids, "text", k=3).ids,
                                  new.search("image", ids, "text", k=3).ids)
    assert (old / "run.json").read_text() == before
