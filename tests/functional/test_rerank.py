"""Cross-modal re-ranking against straightforward loops (tests/reference.py) and by hand."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from reference import rerank_i2t_loop, rerank_t2i_loop, stable_desc

from scalable_xmr.errors import InputError
from scalable_xmr.functional import rerank
from scalable_xmr.functional.rerank import rerank_i2t, rerank_t2i


def _rows_order(out: torch.Tensor) -> list[list[int]]:
    """The invariant: a stable descending sort of each row gives the re-ranked list."""
    return [stable_desc(row).tolist() for row in out.numpy()]


def _check_invariant(sim: np.ndarray, out: np.ndarray, k: int) -> None:
    """Per row: k entries lifted above every original score, all others untouched."""
    changed = out != sim
    assert (changed.sum(1) <= k).all()
    lifted = np.sort(out, axis=1)[:, ::-1][:, :k]  # the k largest of each row
    assert (lifted > sim.max()).all()


# "whole" runs as shipped; "blocks" shrinks the block size so that every step walks many chunks
# (a few rows each) and chunk boundaries fall everywhere.
@pytest.fixture(params=["whole", "blocks"])
def strategy(request, monkeypatch):
    if request.param == "blocks":
        monkeypatch.setattr(rerank, "_BLOCK_ELEMENTS", 13)
    return request.param


def _random_sim(rng, n_img, n_txt, ties):
    if ties:  # integers in a small range: most lists are full of ties
        return rng.integers(0, 3, (n_img, n_txt)).astype(np.float64)
    return rng.normal(size=(n_img, n_txt))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_i2t_matches_loop(strategy, ties, seed):
    rng = np.random.default_rng(seed)
    n_img, n_txt = int(rng.integers(2, 9)), int(rng.integers(2, 14))
    sim = _random_sim(rng, n_img, n_txt, ties)
    for k in sorted({1, 2, n_txt // 2 or 1, n_txt}):
        out = rerank_i2t(sim, k)
        expected = rerank_i2t_loop(sim, k)
        assert _rows_order(out) == [expected[i] for i in range(n_img)]
        _check_invariant(sim, out.numpy(), k)


@pytest.mark.parametrize("groups", ["candidate", "query"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_t2i_matches_loop(strategy, groups, ties, seed):
    rng = np.random.default_rng(100 + seed)
    n_img, n_txt = int(rng.integers(2, 8)), int(rng.integers(2, 14))
    sim = _random_sim(rng, n_img, n_txt, ties)
    text_sim = _random_sim(rng, n_txt, n_txt, ties)
    for k in sorted({1, 2 if n_img > 2 else 1, n_img}):
        for k_text in sorted({0, 1, 2 if n_txt > 2 else 1, n_txt // 2, n_txt - 1}):
            out = rerank_t2i(sim, k, text_sim, k_text, groups=groups)
            expected = rerank_t2i_loop(sim, k, text_sim, k_text, groups=groups)
            assert _rows_order(out.T) == [expected[t] for t in range(n_txt)]
            _check_invariant(sim.T, out.numpy().T, k)


def test_t2i_default_is_candidate_groups_and_variants_differ_somewhere():
    rng = np.random.default_rng(5)
    sim, text_sim = rng.normal(size=(6, 30)), rng.normal(size=(30, 30))
    default = rerank_t2i(sim, 6, text_sim, 3)
    assert torch.equal(default, rerank_t2i(sim, 6, text_sim, 3, groups="candidate"))
    assert not torch.equal(default, rerank_t2i(sim, 6, text_sim, 3, groups="query"))


def test_hand_example_candidate_and_query_groups():
    # K' = 1 under a symmetric text-text similarity; the neighbour relation is still not:
    # t0 -> t2, t1 -> t2, t2 -> t0, so G(t0) = {t0, t2}, G(t1) = {t1, t2}, G(t2) = {t2, t0}.
    text_sim = np.array([[1.0, 0.1, 0.9], [0.1, 1.0, 0.8], [0.9, 0.8, 1.0]])
    sim = np.array([[0.7, 0.6, 0.9],   # img0 ranks t2, t0, t1
                    [0.1, 0.5, 0.8]])  # img1 ranks t2, t1, t0
    query = _rows_order(rerank_t2i(sim, 2, text_sim, 1, groups="query").T)
    candidate = _rows_order(rerank_t2i(sim, 2, text_sim, 1, groups="candidate").T)
    # Query t1, column (.6, .5): img0, img1.
    #   "query": first text of G(t1) = {t1, t2} -> t2 at 0 in both rows: tie, order kept.
    #   "candidate" (Eq. 15): first T_k with t1 in G(T_k) -> only t1 itself: img0 2, img1 1.
    assert query[1] == [0, 1] and candidate[1] == [1, 0]
    # Query t0, column (.7, .1): img0, img1. Texts whose group holds t0: t0 and t2 = G(t0), so
    # both variants agree: t2 at 0 in both rows -> tie, order kept.
    assert query[0] == candidate[0] == [0, 1]
    # Query t2, column (.9, .8): img0, img1. "query": G(t2) = {t2, t0} -> 0, 0. "candidate": t2
    # is in every group -> the top text of each row, 0, 0. Kept.
    assert query[2] == candidate[2] == [0, 1]


def test_hand_example_3x6():
    # Captions 2i, 2i+1 "belong" to image i, but nothing here reads that: only the matrices.
    sim = np.array([
        [0.90, 0.80, 0.70, 0.10, 0.20, 0.30],
        [0.95, 0.10, 0.20, 0.60, 0.50, 0.40],
        [0.30, 0.85, 0.10, 0.20, 0.70, 0.60],
    ])
    # I2T, K=3, image 0: top-3 texts t0, t1, t2. Where is image 0 in each text's image ranking?
    #   column t0 = (.90, .95, .30): img1, img0, img2 -> 1
    #   column t1 = (.80, .10, .85): img2, img0, img1 -> 1
    #   column t2 = (.70, .20, .10): img0 first       -> 0
    # sorted by (position, original place): t2, t0, t1, then t5, t4, t3 as before.
    # Image 1 (t0, t3, t4 -> positions 0, 0, 1) and image 2 (t1, t4, t5 -> 0, 0, 0) keep order.
    assert _rows_order(rerank_i2t(sim, 3)) == [
        [2, 0, 1, 5, 4, 3],
        [0, 3, 4, 5, 2, 1],
        [1, 4, 5, 0, 3, 2],
    ]
    # T2I, K=2, K'=1, text-text similarity pairing (t0,t1), (t2,t3), (t4,t5):
    # This neighbour relation is symmetric, so the candidate's and the query's groups agree.
    text_sim = np.kron(np.eye(3), np.ones((2, 2)))
    out = _rows_order(rerank_t2i(sim, 2, text_sim, 1).T)
    assert out == _rows_order(rerank_t2i(sim, 2, text_sim, 1, groups="query").T)
    # text t2: column (.70, .20, .10) -> top-2 img0, img1; G = {t2, t3}.
    #   img0 ranks texts t0 t1 t2 t5 t4 t3: t2 at 2, t3 at 5 -> 2
    #   img1 ranks texts t0 t3 t4 t5 t2 t1: t3 at 1         -> 1   => img1, img0, img2
    assert out[2] == [1, 0, 2]
    # text t3: column (.10, .60, .20) -> img1, img2; G = {t2, t3}: img1 -> 1, img2 -> 4: kept.
    assert out[3] == [1, 2, 0]
    # text t0: column (.90, .95, .30) -> img1, img0; both rank t0 first (0, 0): tie keeps order.
    assert out[0] == [1, 0, 2]
    # without neighbours (K'=0) text t2 keeps img0 first: img0 has t2 at 2, img1 has t2 at 4.
    assert _rows_order(rerank_t2i(sim, 2, text_sim, 0).T)[2] == [0, 1, 2]


def test_rerankers_take_only_matrices():
    assert list(inspect.signature(rerank_i2t).parameters) == ["sim", "k"]
    assert list(inspect.signature(rerank_t2i).parameters) == ["sim", "k", "text_sim", "k_text", "groups"]


def test_input_untouched_dtype_kept_numpy_and_torch_agree():
    rng = np.random.default_rng(7)
    sim = rng.normal(size=(5, 10)).astype(np.float32)
    before = sim.copy()
    t_sim = torch.from_numpy(sim.copy())
    out_np = rerank_i2t(sim, 4)
    out_t = rerank_i2t(t_sim, 4)
    assert out_np.dtype == torch.float32 and torch.equal(out_np, out_t)
    assert np.array_equal(sim, before) and torch.equal(t_sim, torch.from_numpy(before))
    text_sim = rng.normal(size=(10, 10))
    assert rerank_t2i(sim, 3, text_sim, 2).shape == (5, 10)
    assert np.array_equal(sim, before)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s, ts: rerank_i2t(s, 0), r"k must be an integer in \[1, 6\], got 0"),
        (lambda s, ts: rerank_i2t(s, 7), r"k must be an integer in \[1, 6\], got 7"),
        (lambda s, ts: rerank_i2t(s, 2.0), "k must be an integer"),
        (lambda s, ts: rerank_i2t(np.where(s > 0.5, np.nan, s), 2), "sim contains NaN"),
        (lambda s, ts: rerank_t2i(s, 4, ts, 1), r"k must be an integer in \[1, 3\], got 4"),
        (lambda s, ts: rerank_t2i(s, 2, ts, 6), r"k_text must be an integer in \[0, 5\], got 6"),
        (lambda s, ts: rerank_t2i(s, 2, ts, -1), r"k_text must be an integer in \[0, 5\]"),
        (lambda s, ts: rerank_t2i(s, 2, ts[:5], 1),
         r"text_sim must be \(6, 6\) for sim \(3, 6\), got \(5, 6\)"),
        (lambda s, ts: rerank_t2i(s, 2, ts, 1, groups="both"),
         "groups must be one of candidate, query, got 'both'"),
        (lambda s, ts: rerank_t2i(s, 2, np.where(ts > 0, np.inf, ts), 1), "text_sim contains NaN"),
    ],
)
def test_bad_input(call, match):
    sim = np.linspace(0, 1, 18).reshape(3, 6)
    with pytest.raises(InputError, match=match):
        call(sim, np.eye(6))
