"""Stable rankings (descending score, ties to the lower index) and ranked relevance per chunk."""

from __future__ import annotations

import numpy as np
import torch

from scalable_xmr.functional.retrieval.checks import chunk_ranges


def stable_topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best entries of each row of ``scores`` (B, n), best first.

    Order: descending score, ties to the lower index (a stable descending sort, truncated).
    ``torch.topk`` finds the k + 1 largest values; where the (k+1)-th differs from the k-th, the
    top-k set is exact and only its k members are ordered; rows with a tie across the cut are
    sorted whole.
    """
    n_rows, n_cols = scores.shape
    assert 1 <= k <= n_cols
    values, idx = torch.topk(scores, min(k + 1, n_cols), dim=1)  # (B, k+1) best first
    idx = idx[:, :k]  # (B, k) the right set unless the (k+1)-th value ties with the k-th
    if k < n_cols:
        cut_ties = (values[:, k] == values[:, k - 1]).nonzero()[:, 0]  # (r,)
        if len(cut_ties):
            full = torch.sort(scores[cut_ties], dim=1, descending=True, stable=True).indices
            idx[cut_ties] = full[:, :k]
    idx = idx.sort(1).values  # ascending index, so the stable sort below breaks ties by index
    order = torch.sort(scores.gather(1, idx), dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)  # (B, k)


def stable_argsort_desc(scores: torch.Tensor) -> torch.Tensor:
    """(B, n) int64 order of each row of ``scores``: descending, ties to the lower index.

    float32 rows take a fast exact path: each score becomes an int32 key in the same order
    (IEEE bits, negatives mirrored, -0.0 folded into +0.0), packed with its index into one int64
    that no two entries share, and NumPy sorts those (~3x faster than torch's stable float sort
    on CPU). Other dtypes use ``torch.sort(stable=True)``.
    """
    if scores.dtype != torch.float32 or scores.shape[1] >= 2**31:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices
    key = (scores + 0.0).numpy().view(np.int32).astype(np.int64)  # (B, n); -0.0 -> +0.0
    key ^= (key >> 63) & 0x7FFFFFFF  # negative floats mirrored: key is monotone in the score
    np.negative(key, out=key)  # descending
    key <<= 32
    key |= np.arange(scores.shape[1], dtype=np.int64)  # ties: lower index first; keys unique
    key.sort(axis=1)
    key &= 0xFFFFFFFF
    return torch.from_numpy(key)


def stable_rank(values: torch.Tensor, target: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """0-based position of entry ``target[b]`` in the stable descending order of slice b of
    ``values`` (slices along ``dim``: rows for dim=1, columns for dim=0), without sorting:
    #(v > v_t) + #(v == v_t and index < t). The tie term is counted only where ties exist."""
    assert values.ndim == 2 and dim in (0, 1)
    score = values.gather(dim, target.unsqueeze(dim))  # (B, 1) or (1, B)
    rank = (values > score).sum(dim, dtype=torch.int32).to(torch.int64)  # (B,)
    n_equal = (values == score).sum(dim, dtype=torch.int32)  # (B,) >= 1: the entry itself
    tied = (n_equal > 1).nonzero()[:, 0]  # (r,) slices where another entry equals the target
    if len(tied):
        sub = values.index_select(1 - dim, tied)  # (r, n) or (n, r)
        position = torch.arange(values.shape[dim]).unsqueeze(1 - dim)  # (1, n) or (n, 1)
        before = position < target[tied].unsqueeze(dim)  # (r, n) or (n, r)
        equal = sub == score.index_select(1 - dim, tied)
        rank[tied] += (equal & before).sum(dim)
    return rank


def _relevance(q_lab: torch.Tensor, g_lab: torch.Tensor) -> torch.Tensor:
    """(B, G) bool: query shares at least one label with gallery item (all-zero row: none)."""
    if q_lab.ndim == 1:
        return q_lab[:, None] == g_lab[None, :]
    return (q_lab.to(torch.float32) @ g_lab.to(torch.float32).T) > 0


def ranked_relevance(query_emb, gallery_emb, query_labels, gallery_labels, depth, chunk_size):
    """Yield (rel_ranked (B, depth) bool, n_relevant (B,)) per chunk of queries."""
    n_gallery = gallery_emb.shape[0]
    for q0, q1 in chunk_ranges(query_emb.shape[0], chunk_size):
        sim = query_emb[q0:q1] @ gallery_emb.T  # (B, G) the only similarity block alive
        rel = _relevance(query_labels[q0:q1], gallery_labels)  # (B, G)
        if depth < n_gallery:
            order = stable_topk_indices(sim, depth)  # (B, depth)
        else:
            order = stable_argsort_desc(sim)  # (B, G)
        del sim
        yield rel.gather(1, order), rel.sum(1, dtype=torch.int32).to(torch.int64)
