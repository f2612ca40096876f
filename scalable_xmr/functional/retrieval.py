"""Retrieval metrics: mAP and PR / precision-scope curves (SDML), R@K (VSE++).

Pure functions of arrays or tensors (NumPy or torch in, Python floats / NumPy arrays out).
Memory stays bounded: the query x gallery similarity is built one chunk of queries at a time
(never more than one ``(chunk_size, n_gallery)`` block), and R@K walks a given similarity matrix
in chunks of rows / columns. Every ranking is *stable*: descending score, ties broken by the lower
gallery index, so results are deterministic and match a stable NumPy reference exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from scalable_xmr.errors import InputError

ArrayLike = np.ndarray | torch.Tensor

# Elements per temporary block when a function walks a given matrix (about 64 MB of float32).
_BLOCK_ELEMENTS = 1 << 24
# Recall levels are compared with this tolerance: 3/10 >= 0.30000000000000004 must hold.
_RECALL_TOL = 1e-9


# ----------------------------------------------------------------------------- input checks
def _to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if not isinstance(x, np.ndarray | list | tuple):
        raise InputError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    with warnings.catch_warnings():  # read-only (memory-mapped) arrays: we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(np.asarray(x))


def as_float_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    """Return ``x`` as a finite 2-D float tensor (float64 kept, integers -> float64, else float32).

    Raises InputError naming ``name`` for a wrong rank, an empty matrix or any NaN / inf (checked
    in row chunks so that a big similarity matrix is never duplicated as a boolean mask).
    """
    t = _to_tensor(x, name)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    for r0, r1 in _chunks(t.shape[0], max(1, _BLOCK_ELEMENTS // t.shape[1])):
        # Fast path: a sum is finite when every entry is (one read, no mask); a non-finite sum
        # (NaN / inf inside, or a mere overflow) is resolved entry by entry.
        if bool(torch.isfinite(t[r0:r1].sum())):
            continue
        bad = (~torch.isfinite(t[r0:r1])).nonzero()
        if len(bad):
            row, col = (int(v) for v in bad[0])
            raise InputError(
                f"{name} contains NaN or inf (first at row {r0 + row}, column {col}: "
                f"{t[r0 + row, col].item()})"
            )
    return t


def _as_labels(labels: ArrayLike, name: str, n_rows: int) -> torch.Tensor:
    t = _to_tensor(labels, name)
    if t.ndim not in (1, 2):
        raise InputError(
            f"{name} must be class indices (n,) or multi-hot (n, c), got shape {tuple(t.shape)}"
        )
    if t.shape[0] != n_rows:
        raise InputError(f"{name} has {t.shape[0]} rows but its embeddings have {n_rows}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise InputError(f"{name} must hold integers, got non-integer values ({t.dtype})")
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise InputError(f"{name} contains negative labels (min {int(t.min())})")
    if t.ndim == 2 and t.numel() and int(t.max()) > 1:
        raise InputError(f"{name} is multi-hot (2-D) and must hold only 0/1, found {int(t.max())}")
    return t


def _one_hot(labels: torch.Tensor, n_classes: int, name: str) -> torch.Tensor:
    if labels.ndim == 2:
        return labels
    if labels.numel() and int(labels.max()) >= n_classes:
        raise InputError(
            f"{name} holds class {int(labels.max())} but the other side's multi-hot labels have "
            f"only {n_classes} classes"
        )
    return torch.nn.functional.one_hot(labels, n_classes)


def _check_retrieval_inputs(query_emb, gallery_emb, query_labels, gallery_labels, chunk_size):
    q = as_float_matrix(query_emb, "query_emb")
    g = as_float_matrix(gallery_emb, "gallery_emb")
    if q.shape[1] != g.shape[1]:
        raise InputError(
            f"query_emb has dim {q.shape[1]} but gallery_emb has dim {g.shape[1]}; they must agree"
        )
    if q.dtype != g.dtype:
        q, g = q.to(torch.float64), g.to(torch.float64)
    ql = _as_labels(query_labels, "query_labels", q.shape[0])
    gl = _as_labels(gallery_labels, "gallery_labels", g.shape[0])
    if ql.ndim != gl.ndim:  # class indices on one side, multi-hot on the other: one-hot them
        n_classes = max(ql.shape[1] if ql.ndim == 2 else 0, gl.shape[1] if gl.ndim == 2 else 0)
        ql, gl = _one_hot(ql, n_classes, "query_labels"), _one_hot(gl, n_classes, "gallery_labels")
    if ql.ndim == 2 and ql.shape[1] != gl.shape[1]:
        raise InputError(
            f"query_labels {tuple(ql.shape)} and gallery_labels {tuple(gl.shape)} are multi-hot "
            "with different numbers of classes"
        )
    _check_positive_int(chunk_size, "chunk_size")
    # Cosine similarity: L2-normalise both sides (a zero vector stays zero: similarity 0).
    return F.normalize(q, dim=1), F.normalize(g, dim=1), ql, gl


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


# ----------------------------------------------------------------------------- ranking helpers
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


def _ranked_relevance(query_emb, gallery_emb, query_labels, gallery_labels, depth, chunk_size):
    """Yield (rel_ranked (B, depth) bool, n_relevant (B,)) per chunk of queries."""
    n_gallery = gallery_emb.shape[0]
    for q0, q1 in _chunks(query_emb.shape[0], chunk_size):
        sim = query_emb[q0:q1] @ gallery_emb.T  # (B, G) the only similarity block alive
        rel = _relevance(query_labels[q0:q1], gallery_labels)  # (B, G)
        if depth < n_gallery:
            order = stable_topk_indices(sim, depth)  # (B, depth)
        else:
            order = stable_argsort_desc(sim)  # (B, G)
        del sim
        yield rel.gather(1, order), rel.sum(1, dtype=torch.int32).to(torch.int64)


# ----------------------------------------------------------------------------- mAP (SDML)
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


# ----------------------------------------------------------------------------- curves (SDML)
def precision_recall_curve(
    query_emb: ArrayLike,
    gallery_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    n_points: int = 11,
    recall_levels: Sequence[float] | None = None,
    chunk_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at standard recall levels, averaged over queries (SDML Fig. 2-4).

    For a query, precision at level L is the largest precision@r over the ranks r whose recall
    (hits / R) reaches L (within 1e-9). Levels are ``recall_levels`` or ``n_points`` evenly spaced
    from 0 to 1. Queries with no relevant gallery item have no defined recall and are left out of
    the average (if all are, the precision is all zeros). Returns (recall levels, precision).
    """
    q, g, ql, gl = _check_retrieval_inputs(
        query_emb, gallery_emb, query_labels, gallery_labels, chunk_size
    )
    if recall_levels is None:
        levels = np.linspace(0.0, 1.0, _check_positive_int(n_points, "n_points"))
    else:
        levels = np.asarray(recall_levels, dtype=np.float64).reshape(-1)
        if levels.size == 0 or not np.all((levels >= 0) & (levels <= 1)):
            raise InputError(f"recall_levels must be non-empty values in [0, 1], got {levels}")
    lev = torch.as_tensor(levels)  # (L,)
    ranks = torch.arange(1, g.shape[0] + 1, dtype=torch.float64)  # (G,)
    total, n_used = torch.zeros(len(levels), dtype=torch.float64), 0
    for rel, n_rel in _ranked_relevance(q, g, ql, gl, g.shape[0], chunk_size):
        keep = n_rel > 0
        rel, n_rel = rel[keep], n_rel[keep]
        hits = rel.cumsum(1)  # (B, G) int64, non-decreasing
        best_after = (hits / ranks).flip(1).cummax(1).values.flip(1)  # (B, G) max_{r'>=r} P@r'
        need = torch.ceil(lev[None, :] * n_rel[:, None] - _RECALL_TOL).to(torch.int64)  # (B, L)
        first = torch.searchsorted(hits, need.clamp(min=0))  # (B, L) first rank reaching L
        total += best_after.gather(1, first).sum(0)
        n_used += int(keep.sum())
    return levels, (total / max(n_used, 1)).numpy()


def precision_scope_curve(
    query_emb: ArrayLike,
    gallery_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    scopes: Sequence[int] | None = None,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision@K over all queries for each scope K (SDML Fig. 2-4, right panels).

    ``scopes`` defaults to K = 100, 200, ..., 1000 (SDML, after its ref. [43]) up to the gallery
    size, or 10 evenly spaced K in [1, n_gallery] when the gallery has fewer than 100 items.
    Returns (scopes, precision).
    """
    q, g, ql, gl = _check_retrieval_inputs(
        query_emb, gallery_emb, query_labels, gallery_labels, chunk_size
    )
    n_gallery = g.shape[0]
    if scopes is None:
        ks = [k for k in range(100, 1001, 100) if k <= n_gallery]
        ks = ks or sorted(set(np.linspace(1, n_gallery, 10).round().astype(int).tolist()))
    else:
        ks = [_check_positive_int(k, "scopes") for k in scopes]
        if not ks or max(ks) > n_gallery:
            raise InputError(f"scopes must be non-empty, each in [1, {n_gallery}], got {scopes}")
    idx = torch.as_tensor(ks) - 1  # (S,)
    total = torch.zeros(len(ks), dtype=torch.float64)
    for rel, _ in _ranked_relevance(q, g, ql, gl, max(ks), chunk_size):
        total += rel.cumsum(1)[:, idx].sum(0).to(torch.float64)  # hits within each scope
    return np.asarray(ks), (total / (idx + 1) / q.shape[0]).numpy()


# ----------------------------------------------------------------------------- R@K (VSE++)
def _check_sim(sim: ArrayLike, captions_per_image: int) -> torch.Tensor:
    n = _check_positive_int(captions_per_image, "captions_per_image")
    s = as_float_matrix(sim, "sim")
    if s.shape[1] != s.shape[0] * n:
        raise InputError(
            f"sim has shape {tuple(s.shape)}: expected {s.shape[0]} images x "
            f"{s.shape[0] * n} captions ({n} captions_per_image, caption j -> image j // {n})"
        )
    return s


def _ranks_i2t(sim: torch.Tensor, n: int) -> torch.Tensor:
    """0-based rank, per image, of its best-ranked caption (VSE++ i2t)."""
    n_img, n_txt = sim.shape
    out = []
    for r0, r1 in _chunks(n_img, max(1, _BLOCK_ELEMENTS // n_txt)):
        block = sim[r0:r1]  # (B, T) view
        own = torch.arange(r0 * n, r1 * n).view(r1 - r0, n)  # (B, n) the image's captions
        # The best-ranked of its captions is the first maximum (lowest index among ties), so one
        # stable rank per image equals the minimum of the n ranks.
        best = own.gather(1, block.gather(1, own).argmax(1, keepdim=True))[:, 0]  # (B,)
        out.append(stable_rank(block, best))
    return torch.cat(out)


def _ranks_t2i(sim: torch.Tensor, n: int) -> torch.Tensor:
    """0-based rank, per caption, of its image j // n in that caption's image ranking (VSE++)."""
    n_img, n_txt = sim.shape
    out = []
    for c0, c1 in _chunks(n_txt, max(1, _BLOCK_ELEMENTS // n_img)):
        block = sim[:, c0:c1]  # (N, B) view, one column per caption
        out.append(stable_rank(block, torch.arange(c0, c1) // n, dim=0))
    return torch.cat(out)


def _recall_metrics(ranks: torch.Tensor, prefix: str, ks: Sequence[int]) -> dict[str, float]:
    r = ranks.numpy()
    out = {f"{prefix}@{k}": 100.0 * float(np.mean(r < k)) for k in ks}
    # VSE++ (evaluation.py): medr = floor(median(0-based ranks)) + 1, meanr = mean + 1.
    out[f"{prefix}_medr"] = float(np.floor(np.median(r)) + 1)
    out[f"{prefix}_meanr"] = float(r.mean() + 1)
    return out


def recall_at_k(
    sim: ArrayLike, captions_per_image: int = 5, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image-text R@K, median and mean rank, rsum (the VSE++ protocol, ranks stable by index).

    ``sim`` is (N images, N * captions_per_image captions); caption j belongs to image j // n.
    I2T rank of image i: best 0-based rank among its n captions in row i; T2I rank of caption j:
    0-based rank of image j // n in column j. Recalls ``i2t@k`` / ``t2i@k`` are percentages
    (0..100) of ranks < k; ``*_medr`` = floor(median(0-based ranks)) + 1 and ``*_meanr`` =
    mean(0-based ranks) + 1 (both 1-based as VSE++ reports them); ``rsum`` = sum of all recalls.
    Works on row / column chunks of ``sim``; nothing of its size is allocated.

    Example:
        >>> sim = np.array([[0.9, 0.1, 0.8, 0.3],   # image 0 owns captions 0, 1
        ...                 [0.2, 0.7, 0.6, 0.4]])  # image 1 owns captions 2, 3
        >>> # I2T ranks: image 0 -> caption 0 first (0); image 1 -> caption 2 second (1).
        >>> # T2I ranks: captions 0..3 put their image at 0, 1, 1, 0.
        >>> m = recall_at_k(sim, captions_per_image=2, ks=(1, 2))
        >>> m["i2t@1"], m["i2t@2"], m["t2i@1"], m["t2i_medr"], m["t2i_meanr"], m["rsum"]
        (50.0, 100.0, 50.0, 1.0, 1.5, 300.0)
    """
    s = _check_sim(sim, captions_per_image)
    ks = [_check_positive_int(k, "ks") for k in ks]
    out = _recall_metrics(_ranks_i2t(s, captions_per_image), "i2t", ks)
    out.update(_recall_metrics(_ranks_t2i(s, captions_per_image), "t2i", ks))
    out["rsum"] = sum(out[f"{d}@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def recall_at_k_folds(
    sim: ArrayLike, captions_per_image: int = 5, n_folds: int = 5, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """COCO "1K" protocol: `recall_at_k` on each of ``n_folds`` consecutive image folds (and their
    captions), every metric averaged over folds (as VSE++ does for rsum, medr and meanr too)."""
    s = _check_sim(sim, captions_per_image)
    n_folds = _check_positive_int(n_folds, "n_folds")
    n_img, n = s.shape[0], captions_per_image
    if n_img % n_folds:
        raise InputError(f"sim has {n_img} images, not divisible into n_folds={n_folds} folds")
    m = n_img // n_folds
    folds = [recall_at_k(s[f * m : (f + 1) * m, f * m * n : (f + 1) * m * n], n, ks)
             for f in range(n_folds)]
    return {key: float(np.mean([fold[key] for fold in folds])) for key in folds[0]}


__all__ = [
    "as_float_matrix",
    "average_precision_per_query",
    "mean_average_precision",
    "precision_recall_curve",
    "precision_scope_curve",
    "recall_at_k",
    "recall_at_k_folds",
    "stable_argsort_desc",
    "stable_rank",
    "stable_topk_indices",
]
