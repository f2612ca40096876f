"""Optional faiss-cpu indexes behind the exact search's interface: ``flat`` (exact inner product),
``ivf`` (inverted lists over k-means cells) and ``hnsw`` (a navigable small-world graph).

Embeddings are L2-normalised, so inner product is cosine. ``ivf`` and ``hnsw`` are approximate:
``recall_at_k`` measures how many of the exact top k they return (bench/search_speed.py reports it).

Example:
    >>> import numpy as np
    >>> g = np.eye(4, dtype=np.float32)
    >>> idx, scores = AnnIndex.build(g, "flat").search(g[[2]], k=1)
    >>> idx.tolist(), scores.tolist()
    ([[2]], [[1.0]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalable_xmr.errors import InputError
from scalable_xmr.serving.search import check_k

KINDS = ("exact", "flat", "ivf", "hnsw")


@dataclass
class AnnIndex:
    """A faiss index over a gallery's embeddings (rows keep the gallery's order)."""

    kind: str
    index: Any
    n: int

    @classmethod
    def build(cls, gallery: np.ndarray, kind: str = "flat", nlist: int | None = None, nprobe: int = 16,
              hnsw_m: int = 32, ef_search: int = 128, seed: int = 0) -> AnnIndex:
        """``flat``: exact. ``ivf``: ``nlist`` cells (default ~sqrt(n)), ``nprobe`` searched.
        ``hnsw``: ``hnsw_m`` links a node, ``ef_search`` candidates a search."""
        import faiss

        if kind not in KINDS[1:]:
            raise InputError(f"--ann: expected one of {', '.join(KINDS)}, got {kind!r}")
        x = np.ascontiguousarray(gallery, dtype=np.float32)
        n, d = x.shape
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            # sqrt(n) cells (faiss wants >= 39 training points a cell); 10 k-means iterations (faiss's
            # default 25 costs 2.5x the build for little recall: the cells only route the search).
            nlist = nlist or max(1, min(n // 39, int(math.sqrt(n))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed, index.cp.niter = seed, 10
            index.train(x)
            index.nprobe = min(nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        index.add(x)
        return cls(kind, index, n)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices (Q, k) int64, scores (Q, k) float32); an approximate index may return -1
        (fewer than k found), which is dropped to the end with score -inf."""
        k = check_k(k, self.n)
        scores, idx = self.index.search(np.ascontiguousarray(query, dtype=np.float32), k)
        scores = np.where(idx < 0, -np.inf, scores).astype(np.float32)
        return idx.astype(np.int64), scores


def ann_mode(kind: str) -> str:
    """How a faiss index ranks, for the user: ``faiss flat (exact inner product)``, ``faiss ivf
    (approximate)``."""
    return f"faiss {kind} " + ("(exact inner product)" if kind == "flat" else "(approximate)")


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k ids that the approximate top-k holds."""
    k = exact.shape[1]
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) / k
