"""serving.search (exact chunked top-k, input checks) and serving.ann against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from scalable_xmr.errors import InputError
from scalable_xmr.serving.ann import AnnIndex, recall_at_k
from scalable_xmr.serving.search import check_features, check_k, exact_topk


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _assert_valid_topk(query, gallery, idx, scores, k):
    """The returned rows are a top-k of the float64 NumPy scores: each returned score is the
    item's score, descending, and no left-out item beats the k-th (within float32 rounding)."""
    ref = query.astype(np.float64) @ gallery.astype(np.float64).T  # (Q, G)
    for q in range(len(query)):
        assert len(set(idx[q].tolist())) == k
        np.testing.assert_allclose(scores[q], ref[q, idx[q]], atol=1e-5)
        assert np.all(np.diff(scores[q]) <= 1e-6)
        rest = np.delete(ref[q], idx[q])
        assert rest.size == 0 or rest.max() <= scores[q, -1] + 1e-5


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_exact_topk_equals_brute_force_numpy(chunk):
    rng = np.random.default_rng(0)
    query, gallery = _unit(rng, 9, 24), _unit(rng, 300, 24)
    idx, scores = exact_topk(query, gallery, k=10, chunk=chunk)
    assert idx.shape == scores.shape == (9, 10)
    _assert_valid_topk(query, gallery, idx, scores, 10)


def test_exact_topk_ties_go_to_the_lower_index_across_chunks():
    gallery = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]], dtype=np.float32)  # 0, 2, 3 tie
    for chunk in (1, 2, 5):
        idx, scores = exact_topk(np.array([[1.0, 0.0]], np.float32), gallery, k=4, chunk=chunk)
        assert idx.tolist() == [[0, 2, 3, 1]], chunk
        assert scores.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_exact_topk_reads_a_memory_map_in_blocks(tmp_path):
    rng = np.random.default_rng(1)
    gallery = _unit(rng, 500, 8)
    np.save(tmp_path / "g.npy", gallery)
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    idx, scores = exact_topk(gallery[:3], mm, k=1, chunk=64)
    assert idx[:, 0].tolist() == [0, 1, 2]  # each unit vector is its own best match
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)


@pytest.mark.parametrize("k", [0, -1, 6, 2.5, True, "3"])
def test_k_out_of_range_is_refused(k):
    with pytest.raises(InputError, match=r"k: must be an integer from 1 to the gallery size 5, got"):
        check_k(k, 5)


@pytest.mark.parametrize("features, match", [
    (np.zeros((2, 3)), r"features \(image\): expected shape \(n, 4\) with n >= 1, got \(2, 3\)"),
    (np.zeros((0, 4)), r"expected shape \(n, 4\)"),
    ([[0, 0, float("nan"), 0]], r"NaN or inf at row 0, column 2"),
    ([[0, 0, 0, 0], [0, float("inf"), 0, 0]], r"NaN or inf at row 1, column 1"),
    ([["a", "b", "c", "d"]], r"features \(image\): must be numbers"),
])
def test_bad_features_are_refused(features, match):
    with pytest.raises(InputError, match=match):
        check_features(features, 4, where="image")


def test_one_vector_is_one_row():
    assert check_features([1, 2, 3], 3).shape == (1, 3)


def test_faiss_flat_is_exact_and_approximate_indexes_are_measured():
    rng = np.random.default_rng(2)
    gallery = _unit(rng, 2000, 16)
    query = gallery[:20] + 0.05 * _unit(rng, 20, 16)
    exact_idx, _ = exact_topk(query, gallery, k=10)
    flat_idx, flat_scores = AnnIndex.build(gallery, "flat").search(query, 10)
    _assert_valid_topk(query, gallery, flat_idx, flat_scores, 10)
    assert recall_at_k(flat_idx, exact_idx) == 1.0
    for kind in ("ivf", "hnsw"):
        idx, _ = AnnIndex.build(gallery, kind).search(query, 10)
        assert idx.shape == (20, 10)
        assert 0.0 <= recall_at_k(idx, exact_idx) <= 1.0
        assert set(idx[:, 0].tolist()) <= set(range(2000))


def test_recall_at_k_counts_shared_ids():
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75


def test_unknown_ann_kind_is_refused():
    with pytest.raises(InputError, match=r"--ann: expected one of exact, flat, ivf, hnsw, got 'lsh'"):
        AnnIndex.build(np.eye(3, dtype=np.float32), "lsh")
