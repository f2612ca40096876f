"""Average precision per query and mAP (SDML), one chunk of queries at a time."""

from __future__ import annotations

import numpy as np
import torch

from scalable_xmr.functional.retrieval.checks import (
    ArrayLike,
    _check_positive_int,
    _check_retrieval_inputs,
)
from scalable_xmr.functional.retrieval.ranking import _ranked_relevance


def average_precision_per_query(
    query_emb: ArrayLike,
    gallery_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    top_k: int | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Average precision of every query, float64 array (n_query,). See `mean_average_precision`."""
    q, g, ql, gl = _check_retrieval_inputs(
        query_emb, gallery_emb, query_labels, gallery_labels, chunk_size
    )
    if top_k is not None:
        _check_positive_int(top_k, "top_k")
    # mAP@k with k beyond the gallery equals mAP@all over the whole ranking (the SDML reference
    # code would index out of range; we clamp instead).
    depth = g.shape[0] if top_k is None else min(int(top_k), g.shape[0])
    out = []
    for rel, n_rel in _ranked_relevance(q, g, ql, gl, depth, chunk_size):
        # Only relevant ranks contribute: the m-th relevant item at 1-based rank r adds P@r = m / r.
        row, col = rel.nonzero(as_tuple=True)  # (H,) row-major: ranks ascending within a row
        found = rel.sum(1, dtype=torch.int32).to(torch.int64)  # (B,) relevant within the depth
        first = torch.cumsum(found, 0) - found  # (B,) offset of each row's hits in (row, col)
        hit_no = torch.arange(1, len(row) + 1) - first[row]  # (H,) m
        prec_sum = torch.zeros(len(rel), dtype=torch.float64).index_add_(
            0, row, hit_no.to(torch.float64) / (col + 1)
        )  # (B,)
        # SDML: AP = (1/R) sum_{relevant r} P@r; @k divides by the relevant found in the top k.
        denom = (n_rel if top_k is None else found).to(torch.float64)
        out.append(torch.where(denom > 0, prec_sum / denom.clamp(min=1), 0.0))  # no relevant: 0
    return torch.cat(out).numpy()


def mean_average_precision(
    query_emb: ArrayLike,
    gallery_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    top_k: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Mean average precision of cross-modal retrieval with cosine similarity (SDML Sec. 4).

    Args:
        query_emb: (n_query, d) query embeddings (NumPy or torch); L2-normalised here.
        gallery_emb: (n_gallery, d) gallery embeddings; L2-normalised here.
        query_labels: (n_query,) class indices or (n_query, c) multi-hot 0/1.
        gallery_labels: (n_gallery,) or (n_gallery, c), likewise (class indices on one side and
            multi-hot on the other are compared as one-hot against multi-hot).
        top_k: None for mAP@all: AP = (1/R) sum over relevant ranks r of precision@r, R = number
            of relevant gallery items. An int k for mAP@k as the SDML reference code computes it:
            the precision@r at each relevant item within the top k, averaged over those found
            (0 if none). k larger than the gallery is clamped to it.
        chunk_size: queries per similarity block (memory ~ chunk_size x n_gallery).

    Relevant = shares at least one label (an all-zero multi-hot row is relevant to nothing); a
    query with no relevant item scores AP 0; ties rank the lower gallery index first.

    Example:
        >>> import numpy as np
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> g = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> # query 0 ranks g0, g1, g2 and its class-0 items are g1, g2: AP = (1/2 + 2/3) / 2
        >>> # query 1 ranks g2, g1, g0 and its class-1 item is g0: AP = 1/3
        >>> round(mean_average_precision(q, g, [0, 1], [1, 0, 0]), 4)  # (7/12 + 4/12) / 2
        0.4583
        >>> mean_average_precision(q, g, [0, 1], [1, 0, 0], top_k=2)  # (1/2 + 0) / 2
        0.25
    """
    ap = average_precision_per_query(
        query_emb, gallery_emb, query_labels, gallery_labels, top_k, chunk_size
    )
    return float(ap.mean())
