"""mAP, PR / precision-scope curves and R@K against loop references and hand computations."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from reference import recall_at_k_loop  # independent loop reference (tests/reference.py)

from scalable_xmr.errors import InputError
from scalable_xmr.functional import retrieval
from scalable_xmr.functional.retrieval import (
    average_precision_per_query,
    mean_average_precision,
    precision_recall_curve,
    precision_scope_curve,
    recall_at_k,
    recall_at_k_folds,
    scope_levels,
    stable_argsort_desc,
    stable_rank,
    stable_topk_indices,
)


# ------------------------------------------------------------------ NumPy loop references
def _cosine(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


def _label_sets(labels: np.ndarray) -> list[set[int]]:
    if labels.ndim == 1:
        return [{int(v)} for v in labels]
    return [set(np.flatnonzero(row).tolist()) for row in labels]


def _ranked_rel(q, g, ql, gl) -> list[np.ndarray]:
    sim, qs, gs = _cosine(q, g), _label_sets(ql), _label_sets(gl)
    out = []
    for i in range(len(q)):
        order = np.argsort(-sim[i], kind="stable")
        out.append(np.array([bool(qs[i] & gs[j]) for j in order]))
    return out


def ap_reference(q, g, ql, gl, k=None, no_relevant="zero") -> np.ndarray:
    """SDML fx_calc_map_label: p += r / (j + 1) at each relevant j of the top k; AP = p / r.
    A query with nothing relevant found: 0 (fx_calc_map_label) or NaN = left out of the mean
    (fx_calc_map_multilabel_k)."""
    res = []
    for rel in _ranked_rel(q, g, ql, gl):
        depth = len(rel) if k is None else min(k, len(rel))
        p = r = 0.0
        for j in range(depth):
            if rel[j]:
                r += 1
                p += r / (j + 1)
        denom = rel.sum() if k is None else r
        res.append(p / denom if denom > 0 else (0.0 if no_relevant == "zero" else float("nan")))
    return np.array(res)


def map_reference(q, g, ql, gl, k=None, no_relevant="zero") -> float:
    """Plain mean over the queries that count (every one for "zero")."""
    kept = [a for a in ap_reference(q, g, ql, gl, k, no_relevant) if a == a]
    return sum(kept) / len(kept) if kept else float("nan")


def pr_reference(q, g, ql, gl, levels) -> np.ndarray:
    curves = []
    for rel in _ranked_rel(q, g, ql, gl):
        if rel.sum() == 0:
            continue
        hits = np.cumsum(rel)
        precision, recall = hits / np.arange(1, len(rel) + 1), hits / rel.sum()
        curves.append([precision[recall >= lev - 1e-9].max() for lev in levels])
    return np.mean(curves, axis=0)


def scope_reference(q, g, ql, gl, scopes) -> np.ndarray:
    rels = _ranked_rel(q, g, ql, gl)
    return np.array([np.mean([rel[:k].sum() / k for rel in rels]) for k in scopes])


def _data(seed, n_q=13, n_g=17, dim=5, n_classes=4, multi=False, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # entries +-1/2 in 4-D: unit norm exactly, cosines are exact multiples of 1/4
        q = rng.choice([-0.5, 0.5], size=(n_q, 4))
        g = rng.choice([-0.5, 0.5], size=(n_g, 4))
    else:
        q, g = rng.normal(size=(n_q, dim)), rng.normal(size=(n_g, dim))
    if multi:
        ql = (rng.random((n_q, n_classes)) < 0.3).astype(np.int64)
        gl = (rng.random((n_g, n_classes)) < 0.3).astype(np.int64)
    else:
        ql, gl = rng.integers(0, n_classes, n_q), rng.integers(0, n_classes, n_g)
    return q, g, ql, gl


# ------------------------------------------------------------------ ranking helpers
def _awkward_rows(dtype) -> np.ndarray:
    """Rows with heavy ties, signed zeros, subnormals, huge and negative values."""
    rng = np.random.default_rng(11)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, 1.0, -1.0, 0.5, -0.5, 0.5, 0.0])
    return np.concatenate([
        rng.normal(size=(3, 36)),
        rng.integers(-2, 3, (4, 36)),
        np.tile(special, (3, 3)),
    ]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_orders_match_numpy(dtype):
    x = _awkward_rows(dtype)
    expected = np.argsort(-x, axis=1, kind="stable")  # -0.0 == 0.0, so ties by index
    np.testing.assert_array_equal(stable_argsort_desc(torch.from_numpy(x)).numpy(), expected)
    for k in (1, 2, 5, 35, 36):
        np.testing.assert_array_equal(
            stable_topk_indices(torch.from_numpy(x), k).numpy(), expected[:, :k]
        )
    target = np.arange(len(x)) * 5 % x.shape[1]
    position = np.argsort(expected, axis=1)  # inverse permutation: rank of every entry
    got = stable_rank(torch.from_numpy(x), torch.from_numpy(target))
    np.testing.assert_array_equal(got.numpy(), position[np.arange(len(x)), target])
    cols = np.arange(x.shape[1]) % len(x)  # the same, down the columns
    expected_cols = np.argsort(np.argsort(-x, axis=0, kind="stable"), axis=0)
    got = stable_rank(torch.from_numpy(x), torch.from_numpy(cols), dim=0)
    np.testing.assert_array_equal(got.numpy(), expected_cols[cols, np.arange(x.shape[1])])


# ------------------------------------------------------------------ mAP
def test_doctests_run():
    result = doctest.testmod(retrieval)
    assert result.attempted >= 4 and result.failed == 0


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("top_k", [None, 1, 3, 16, 17, 40])
def test_ap_matches_reference(multi, ties, top_k):
    q, g, ql, gl = _data(seed=3 + multi + 2 * ties, multi=multi, ties=ties)
    expected = ap_reference(q, g, ql, gl, top_k)
    for chunk in (1, 4, 1024):
        got = average_precision_per_query(q, g, ql, gl, top_k=top_k, chunk_size=chunk)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert mean_average_precision(q, g, ql, gl, top_k) == pytest.approx(expected.mean(), abs=1e-12)


@pytest.mark.parametrize("no_relevant", ["zero", "skip"])
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("top_k", [None, 1, 2, 5])
def test_no_relevant_modes_match_reference(no_relevant, multi, top_k):
    # 9 classes: few relevant items per query; query 0's class 8 is nowhere in the gallery
    q, g, ql, gl = _data(seed=31, n_classes=9, multi=multi)
    if multi:
        gl[:, 8], ql[0] = 0, np.eye(9, dtype=ql.dtype)[8]
    else:
        gl[gl == 8], ql[0] = 0, 8
    expected = ap_reference(q, g, ql, gl, top_k, no_relevant)
    assert (expected == 0).any() if no_relevant == "zero" else np.isnan(expected).any()
    for chunk in (1, 5, 1024):
        got = average_precision_per_query(q, g, ql, gl, top_k, chunk, no_relevant)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)  # NaN where expected NaN
    got = mean_average_precision(q, g, ql, gl, top_k, no_relevant=no_relevant)
    assert got == pytest.approx(map_reference(q, g, ql, gl, top_k, no_relevant), abs=1e-12)


def test_no_relevant_modes_by_hand():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    ql, gl = [0, 1, 2], [1, 0, 0]  # class 2: nothing in the gallery
    # query 0 ranks g0, g1, g2 (rel 0, 1, 1); query 1 ranks g2, g1, g0 (rel 0, 0, 1);
    # query 2 ranks g1 (cos .99), then g0 and g2 tie at .71 -> g0, g2; it has no relevant item.
    # top 2: query 0 finds g1 at rank 2 -> AP 1/2; query 1 finds nothing in its top 2; query 2 none.
    np.testing.assert_allclose(average_precision_per_query(q, g, ql, gl, top_k=2), [0.5, 0, 0])
    assert mean_average_precision(q, g, ql, gl, top_k=2) == pytest.approx(0.5 / 3)
    skipped = average_precision_per_query(q, g, ql, gl, top_k=2, no_relevant="skip")
    np.testing.assert_allclose(skipped, [0.5, np.nan, np.nan])
    assert mean_average_precision(q, g, ql, gl, top_k=2, no_relevant="skip") == pytest.approx(0.5)
    # mAP@all: query 0 (1/2 + 2/3) / 2 = 7/12, query 1 1/3, query 2 has no relevant item at all
    assert mean_average_precision(q, g, ql, gl) == pytest.approx((7 / 12 + 1 / 3 + 0) / 3)
    assert mean_average_precision(q, g, ql, gl, no_relevant="skip") == pytest.approx((7 / 12 + 1 / 3) / 2)
    # every query skipped: nothing to average
    assert np.isnan(mean_average_precision(q, g, [2, 2, 2], gl, top_k=1, no_relevant="skip"))


@pytest.mark.parametrize("top_k", [None, 4])
def test_ap_float32_fast_path(top_k):
    # +-1/2 entries: float32 cosines are exact, so the float64 loop reference must agree exactly
    q, g, ql, gl = _data(seed=21, n_q=9, n_g=40, ties=True)
    got = average_precision_per_query(q.astype(np.float32), g.astype(np.float32), ql, gl, top_k)
    np.testing.assert_allclose(got, ap_reference(q, g, ql, gl, top_k), rtol=0, atol=1e-12)


def test_ties_rank_lower_gallery_index_first():
    q = np.array([[1.0, 0.0]])
    g = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # g0, g1 tie at cosine 1
    # g0 irrelevant, g1 relevant -> g1 at rank 2: AP 1/2; swapped -> rank 1: AP 1
    assert mean_average_precision(q, g, [0], [1, 0, 1]) == pytest.approx(0.5)
    assert mean_average_precision(q, g, [0], [0, 1, 1]) == pytest.approx(1.0)


def test_no_relevant_and_unlabeled_rows_score_zero():
    q = np.eye(3)
    g = np.eye(3)
    ql = np.array([[1, 0], [0, 0], [0, 1]])  # query 1 unlabeled
    gl = np.array([[1, 0], [1, 0], [0, 0]])  # nothing of class 1; gallery 2 unlabeled
    ap = average_precision_per_query(q, g, ql, gl)
    # query 0: ranks g0 (rel), then g1, g2 tie at 0 -> g1 (rel): AP (1 + 2/2) / 2 = 1
    np.testing.assert_allclose(ap, [1.0, 0.0, 0.0])
    assert mean_average_precision(q, g, ql, gl) == pytest.approx(1 / 3)


def test_class_indices_against_multi_hot():
    q, g, ql, gl = _data(seed=4, multi=False)
    expected = ap_reference(q, g, ql, gl)
    gl_hot = np.eye(4, dtype=int)[gl]
    np.testing.assert_allclose(average_precision_per_query(q, g, ql, gl_hot), expected)
    np.testing.assert_allclose(average_precision_per_query(q, g, np.eye(4)[ql], gl), expected)


def test_numpy_and_torch_inputs_agree():
    q, g, ql, gl = _data(seed=9)
    a = mean_average_precision(q, g, ql, gl)
    b = mean_average_precision(torch.from_numpy(q).float(), torch.from_numpy(g).float(),
                               torch.from_numpy(ql), torch.from_numpy(gl))
    assert a == pytest.approx(b, abs=1e-6)


def test_similarity_is_built_one_chunk_at_a_time(monkeypatch):
    q, g, ql, gl = _data(seed=1, n_q=23, n_g=30)
    seen = []
    real_sort = torch.sort

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real_sort(x, *args, **kwargs)

    monkeypatch.setattr(torch, "sort", spy)
    mean_average_precision(q, g, ql, gl, chunk_size=5)
    assert seen and all(rows <= 5 and cols == 30 for rows, cols in seen)
    assert len(seen) == 5  # ceil(23 / 5) blocks


# ------------------------------------------------------------------ curves
@pytest.mark.parametrize("multi", [False, True])
def test_precision_recall_curve_matches_reference(multi):
    q, g, ql, gl = _data(seed=5, n_g=20, multi=multi, ties=True)
    levels, prec = precision_recall_curve(q, g, ql, gl, chunk_size=3)
    np.testing.assert_allclose(levels, np.linspace(0, 1, 11))
    np.testing.assert_allclose(prec, pr_reference(q, g, ql, gl, levels), atol=1e-12)


def test_precision_recall_curve_by_hand():
    # one query, ranking rel = [1, 0, 1, 0]: P@r = 1, 1/2, 2/3, 1/2 and recall 1/2, 1/2, 1, 1
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    levels, prec = precision_recall_curve(q, g, [0], [0, 1, 0, 1], recall_levels=[0, 0.5, 0.6, 1])
    np.testing.assert_allclose(prec, [1.0, 1.0, 2 / 3, 2 / 3])


def test_precision_scope_curve_matches_reference():
    q, g, ql, gl = _data(seed=6, n_g=25, multi=True)
    scopes, prec = precision_scope_curve(q, g, ql, gl, scopes=[1, 5, 10, 25], chunk_size=4)
    np.testing.assert_allclose(prec, scope_reference(q, g, ql, gl, [1, 5, 10, 25]), atol=1e-12)
    default_scopes, _ = precision_scope_curve(q, g, ql, gl)  # scope_levels(25): from 1 to 25
    assert default_scopes.tolist() == list(scope_levels(25))


@pytest.mark.parametrize("n", [1, 3, 25, 100, 250, 400, 999, 1000, 1500, 10_000])
def test_scope_levels_span_the_gallery_with_the_papers_k_that_fit(n):
    ks = scope_levels(n)
    assert ks[0] == 1 and ks[-1] == n and list(ks) == sorted(set(ks))  # 1 .. N, increasing
    assert len(ks) <= 30  # about 20 log-spaced points plus the paper's ten at most
    paper = [k for k in range(100, 1001, 100) if k <= n]
    assert set(paper) <= set(ks)  # SDML Fig. 4's K = 100..1000, those that fit
    others = [k for k in ks if k not in paper and k != n]
    assert all(abs(k - p) >= 0.1 * p for k in others for p in paper)  # no near-duplicate of them


def test_scope_levels_adapt_to_small_galleries():
    # a 100-item demo gallery: a whole curve from 1 to 100 (the paper's grid gave one point)
    assert scope_levels(100) == (1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 23, 30, 38, 48, 62, 78, 100)
    # mfeat's 400-item test split: 1 .. 400, with the paper's 100, 200, 300 (it gave those 4 only)
    assert scope_levels(400) == (1, 2, 3, 4, 5, 7, 9, 12, 17, 23, 32, 44, 60, 83, 100, 113, 155, 200,
                                 300, 400)
    big = scope_levels(1500)  # >= 1000 items: the paper's ten K, and the curve goes on to N
    assert set(range(100, 1001, 100)) <= set(big) and big[-3:] == (900, 1000, 1500)
    assert scope_levels(3) == (1, 2, 3) and scope_levels(1) == (1,)
    assert scope_levels(10, n_points=4) == (1, 2, 5, 10)
    q, g, ql, gl = _data(seed=8, n_q=4, n_g=250, dim=3)
    scopes, prec = precision_scope_curve(q, g, ql, gl)
    assert scopes.tolist() == list(scope_levels(250)) and {100, 200} <= set(scopes.tolist())
    np.testing.assert_allclose(prec, scope_reference(q, g, ql, gl, scopes.tolist()), atol=1e-12)


# ------------------------------------------------------------------ R@K
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_recall_at_k_matches_vsepp_loop(monkeypatch, n, ties):
    rng = np.random.default_rng(n)
    n_img = 12
    sim = rng.integers(0, 3, (n_img, n_img * n)).astype(float) if ties else rng.normal(
        size=(n_img, n_img * n))
    expected = recall_at_k_loop(sim, n)
    assert recall_at_k(sim, n) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(retrieval.recall, "BLOCK_ELEMENTS", 7 * n)  # force many row/column chunks
    assert recall_at_k(sim, n) == pytest.approx(expected, abs=1e-12)
    assert set(expected) == {"i2t@1", "i2t@5", "i2t@10", "t2i@1", "t2i@5", "t2i@10",
                             "i2t_medr", "t2i_medr", "i2t_meanr", "t2i_meanr", "rsum"}


def test_recall_at_k_ties_by_index():
    # all scores equal: every list is in index order. Image i's first caption sits at rank 2i,
    # caption j's image at rank j // 2.
    sim = np.zeros((3, 6))
    m = recall_at_k(sim, captions_per_image=2, ks=(1, 3))
    assert m["i2t@1"] == pytest.approx(100 / 3) and m["i2t@3"] == pytest.approx(200 / 3)
    assert m["t2i@1"] == pytest.approx(100 / 3) and m["i2t_meanr"] == pytest.approx(3.0)
    assert m["t2i_medr"] == 2.0  # ranks 0,0,1,1,2,2 -> median 1 -> floor + 1


def test_huge_finite_scores_are_accepted():
    # a row sum overflows to inf, yet every entry is finite: the fast finite check must not fire
    sim = np.full((2, 4), 3e38, dtype=np.float32)
    sim[0, 0] = sim[1, 2] = 3.2e38
    # i2t: both images rank a caption of their own first (100); t2i: caption 3 ties its image 1
    # with image 0, which wins by index (3 of 4 captions: 75)
    assert recall_at_k(sim, captions_per_image=2, ks=(1,))["rsum"] == pytest.approx(175.0)


def test_recall_at_k_folds_is_mean_over_folds():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(10, 20))
    folds = [recall_at_k_loop(sim[f * 2:(f + 1) * 2, f * 4:(f + 1) * 4], 2) for f in range(5)]
    got = recall_at_k_folds(sim, captions_per_image=2, n_folds=5)
    for key in folds[0]:
        assert got[key] == pytest.approx(np.mean([fold[key] for fold in folds]))


# ------------------------------------------------------------------ bad inputs
_Q, _G = np.ones((2, 3)), np.ones((4, 3))
_QL, _GL = np.array([0, 1]), np.array([0, 1, 1, 0])


def _nan(a):
    a = a.copy()
    a[1, 1] = np.nan
    return a


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_emb": _nan(_Q)}, "query_emb contains NaN"),
        ({"gallery_emb": _G * np.inf}, "gallery_emb contains NaN or inf"),
        ({"gallery_emb": np.ones((4, 2))}, "query_emb has dim 3 but gallery_emb has dim 2"),
        ({"query_emb": np.ones(3)}, "query_emb must be a non-empty 2-D"),
        ({"query_labels": np.array([0, 1, 1])}, "query_labels has 3 rows"),
        ({"gallery_labels": np.array([0, -1, 1, 0])}, "gallery_labels contains negative"),
        ({"query_labels": np.array([0.5, 1.0])}, "query_labels must hold integers"),
        ({"query_labels": np.array([[0, 2], [1, 0]])}, "must hold only 0/1"),
        ({"query_labels": np.eye(2, dtype=int)[:, :1]}, "holds class 1 but .* only 1 classes"),
        ({"query_labels": np.eye(2, dtype=int), "gallery_labels": np.ones((4, 3), int)},
         "different numbers of classes"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 2.5}, "top_k must be an integer >= 1"),
        ({"no_relevant": "drop"}, "no_relevant must be one of zero, skip, got 'drop'"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
    ],
)
def test_map_rejects_bad_input(kwargs, match):
    args = {"query_emb": _Q, "gallery_emb": _G, "query_labels": _QL, "gallery_labels": _GL}
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        mean_average_precision(**args)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: recall_at_k(_nan(np.ones((2, 10)))), "sim contains NaN"),
        (lambda: recall_at_k(np.ones((2, 9))), r"sim has shape \(2, 9\): expected 2 images x 10"),
        (lambda: recall_at_k(np.ones((2, 10)), captions_per_image=0), "captions_per_image"),
        (lambda: recall_at_k(np.ones((2, 10)), ks=(0,)), "ks must be an integer >= 1"),
        (lambda: recall_at_k_folds(np.ones((6, 30)), n_folds=4), "not divisible into n_folds=4"),
        (lambda: precision_scope_curve(_Q, _G, _QL, _GL, scopes=[5]), r"scopes .* \[1, 4\]"),
        (lambda: precision_recall_curve(_Q, _G, _QL, _GL, recall_levels=[1.5]), "recall_levels"),
    ],
)
def test_recall_and_curves_reject_bad_input(call, match):
    with pytest.raises(InputError, match=match):
        call()
