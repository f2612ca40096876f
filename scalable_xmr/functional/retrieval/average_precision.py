"""Average precision per query and mAP (SDML), one chunk of queries at a time.

A query with no relevant item among the ranks scored (its top k for mAP@k, the whole gallery for
mAP@all) has no defined AP. Two conventions exist, both in the SDML reference code
(utils_PyTorch.py), and ``no_relevant`` picks one:

- ``"zero"`` (default): the query scores AP 0 and counts in the mean. The reference's single-label
  ``fx_calc_map_label`` (XMedia, Wikipedia: the paper's tables) does this, and docs/metrics.md fixes it.
- ``"skip"``: the query is left out of the mean (its per-query AP is NaN). The reference's
  multi-label ``fx_calc_map_multilabel_k`` (NUS-WIDE, MS-COCO) does this.

Why "zero" stays the default: it matches the paper's single-label numbers, and with "skip" the set
of averaged queries depends on the model, so a model that pushes a hard query's relevant items out
of its top k can *raise* mAP@k (that query stops counting). If every query is skipped the mean is
NaN (there is nothing to average).
"""

from __future__ import annotations

import numpy as np
import torch

from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval.checks import (
    ArrayLike,
    check_positive_int,
    check_retrieval_inputs,
)
from scalable_xmr.functional.retrieval.ranking import ranked_relevance

NO_RELEVANT_MODES = ("zero", "skip")  # see the module docstring; "zero" is the default


def check_no_relevant(value: str, name: str = "no_relevant") -> str:
    """``value`` if it is one of NO_RELEVANT_MODES, else InputError naming ``name`` (a flag)."""
    if value not in NO_RELEVANT_MODES:
        raise InputError(f"{name} must be one of {', '.join(NO_RELEVANT_MODES)}, got {value!r}")
    return value


def average_precision_per_query(
    query_emb: ArrayLike,
    gallery_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    top_k: int | None = None,
    chunk_size: int = 1024,
    no_relevant: str = "zero",
) -> np.ndarray:
    """Average precision of every query, float64 array (n_query,). See `mean_average_precision`;
    a query with no relevant item in the ranks scored is 0 (``"zero"``) or NaN (``"skip"``)."""
    check_no_relevant(no_relevant)
    q, g, ql, gl = check_retrieval_inputs(
        query_emb, gallery_emb, query_labels, gallery_labels, chunk_size
    )
    if top_k is not None:
        check_positive_int(top_k, "top_k")
    # mAP@k with k beyond the gallery equals mAP@all over the whole ranking (the SDML reference
    # code would index out of range; we clamp instead).
    depth = g.shape[0] if top_k is None else min(int(top_k), g.shape[0])
    out = []
    for rel, n_rel in ranked_relevance(q, g, ql, gl, depth, chunk_size):
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
        # A query with nothing relevant found within the depth (then denom = 0): 0 or NaN.
        empty = 0.0 if no_relevant == "zero" else float("nan")
        out.append(torch.where(denom > 0, prec_sum / denom.clamp(min=1), empty))
    return torch.cat(out).numpy()


def mean_average_precision(
    query_emb: ArrayLike,
    gallery_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    top_k: int | None = None,
    chunk_size: int = 1024,
    no_relevant: str = "zero",
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
            the precision@r at each relevant item within the top k, averaged over those found.
            k larger than the gallery is clamped to it.
        chunk_size: queries per similarity block (memory ~ chunk_size x n_gallery).
        no_relevant: a query with no relevant item in the ranks scored (top k, or the whole
            gallery): ``"zero"`` (default) scores it AP 0 and keeps it in the mean (the SDML
            reference code's single-label definition); ``"skip"`` leaves it out of the mean (its
            multi-label one). NaN if every query is skipped. See the module docstring.

    Relevant = shares at least one label (an all-zero multi-hot row is relevant to nothing);
    ties rank the lower gallery index first.

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
        >>> # query 1 has no relevant item in its top 2: "skip" leaves it out of the mean
        >>> mean_average_precision(q, g, [0, 1], [1, 0, 0], top_k=2, no_relevant="skip")
        0.5
    """
    ap = average_precision_per_query(
        query_emb, gallery_emb, query_labels, gallery_labels, top_k, chunk_size, no_relevant
    )
    kept = ap[~np.isnan(ap)]
    return float(kept.mean()) if len(kept) else float("nan")
