"""Exact top-k search of a gallery: chunked matmul + top-k, memory bounded (no Ray, no run).

``exact_topk`` scores the queries against one chunk of the gallery at a time and keeps a running
top-k per query, so only a ``(n_query, chunk)`` block of scores is ever alive, however large the
gallery. Order: descending score, ties to the lower gallery index (the same stable order as
``functional.retrieval``), so results are deterministic.

Example:
    >>> import numpy as np
    >>> gallery = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    >>> idx, scores = exact_topk(np.array([[0.0, 1.0]], dtype=np.float32), gallery, k=2, chunk=2)
    >>> idx.tolist(), [[round(float(s), 3) for s in row] for row in scores]
    ([[1, 2]], [[1.0, 0.8]])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval import stable_topk_indices

# Gallery rows scored per block: (n_query x CHUNK) float32 scores stay small (100 queries: 26 MB).
DEFAULT_CHUNK = 65_536


@dataclass(frozen=True)
class SearchResult:
    """The k best gallery items of each query, best first."""

    query_ids: np.ndarray  # (Q,) object (str); "" for queries given as features without ids
    ids: np.ndarray  # (Q, k) object (str)
    scores: np.ndarray  # (Q, k) float32 (cosine for embedding models; MTFN: its fusion logits)
    indices: np.ndarray  # (Q, k) int64 rows of the gallery
    mode: str = "exact"  # how the ranking was made: "exact ...", "two-stage ...", "faiss ivf ..."

    def rows(self) -> list[dict]:
        """One dict per (query, rank): ``query_id, rank (1-based), id, score``."""
        return [{"query_id": str(q), "rank": r + 1, "id": str(self.ids[i, r]),
                 "score": float(self.scores[i, r])}
                for i, q in enumerate(self.query_ids) for r in range(self.ids.shape[1])]


def check_k(k: object, n_gallery: int, field: str = "k") -> int:
    """``k`` as an int in [1, n_gallery], else a one-line InputError naming ``field`` and the value."""
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= int(k) <= n_gallery:
        raise InputError(f"{field}: must be an integer from 1 to the gallery size {n_gallery}, got {k!r}")
    return int(k)


def check_features(features: object, dim: int, field: str = "features", where: str = "") -> np.ndarray:
    """``features`` as a C-contiguous float32 ``(n, dim)`` array with no NaN/inf, else InputError.

    A single vector ``(dim,)`` becomes one row. ``where`` names the modality (or file) in messages.
    """
    at = f" ({where})" if where else ""
    try:
        x = np.asarray(features, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{field}{at}: must be numbers, got {type(features).__name__} ({e})") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != dim:
        raise InputError(f"{field}{at}: expected shape (n, {dim}) with n >= 1, got {tuple(x.shape)}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        row = int(bad[0])
        col = int(np.flatnonzero(~np.isfinite(x[row]))[0])
        raise InputError(f"{field}{at}: NaN or inf at row {row}, column {col} (value {x[row, col]})")
    return np.ascontiguousarray(x)


def exact_topk(query: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int,
               chunk: int = DEFAULT_CHUNK,
               device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(indices (Q, k) int64, scores (Q, k) float32) of the k largest ``query @ gallery.T`` per row.

    The gallery is read ``chunk`` rows at a time (a NumPy memmap stays on disk until its block is
    scored); each block is moved to ``device`` (a GPU when given) and scored with one matmul.
    Peak memory: ``Q x (chunk + 2k)`` scores plus one gallery block.
    """
    q = query if isinstance(query, torch.Tensor) else torch.from_numpy(np.asarray(query, np.float32))
    q = q.to(device, torch.float32)  # (Q, d)

    def score(start: int, end: int) -> torch.Tensor:
        return q @ _block(gallery, start, end).to(q.device, torch.float32).T  # (Q, C)

    return chunked_topk(score, int(gallery.shape[0]), k, chunk)


def chunked_topk(score: Callable[[int, int], torch.Tensor], n_gallery: int, k: int,
                 chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Running top-k over gallery blocks: ``score(start, end)`` gives the (Q, end - start) scores
    of every query against gallery rows [start, end). Returns (indices (Q, k), scores (Q, k)).

    Each block is cut to its own stable top-k and merged with the running one; earlier blocks hold
    lower gallery indices, so concatenating [running, new] and sorting stably keeps ties to the
    lower index (the order ``stable_topk_indices`` gives inside a block).
    """
    k = check_k(k, n_gallery)
    best_scores: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, n_gallery, chunk):
        sim = score(start, min(start + chunk, n_gallery)).float()  # (Q, C)
        top = stable_topk_indices(sim, min(k, sim.shape[1]))  # (Q, <=k) within the block
        cand_scores, cand_idx = sim.gather(1, top), top + start
        if best_scores is not None:
            cand_scores = torch.cat([best_scores, cand_scores], dim=1)  # (Q, <=2k)
            cand_idx = torch.cat([best_idx, cand_idx], dim=1)
        order = torch.sort(cand_scores, dim=1, descending=True, stable=True).indices[:, :k]
        best_scores, best_idx = cand_scores.gather(1, order), cand_idx.gather(1, order)
        del sim
    assert best_scores is not None and best_idx is not None
    return best_idx.cpu().numpy(), best_scores.cpu().numpy()


def _block(gallery: np.ndarray | torch.Tensor, start: int, end: int) -> torch.Tensor:
    if isinstance(gallery, torch.Tensor):
        return gallery[start:end]
    with warnings.catch_warnings():  # memory maps and Arrow buffers are read-only; never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(gallery[start:end], dtype=np.float32))


def gemm_flops(n_query: int, n_gallery: int, dim: int) -> int:
    """Multiply-adds x 2 of scoring ``n_query`` queries against the gallery: the GEMM floor's work."""
    return 2 * n_query * n_gallery * dim


def result_from(query_ids: Sequence[str], gallery_ids: np.ndarray, idx: np.ndarray,
                scores: np.ndarray, mode: str = "exact") -> SearchResult:
    """A :class:`SearchResult` from gallery row indices (``exact_topk`` or an ANN index)."""
    gallery_ids = np.asarray(gallery_ids, dtype=object)
    return SearchResult(np.asarray(list(query_ids), dtype=object), gallery_ids[idx],
                        np.asarray(scores, np.float32), np.asarray(idx, np.int64), mode)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, math.ulp(1.0))
