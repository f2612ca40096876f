"""Straightforward loop references for re-ranking and R@K (NumPy, one query at a time).

Independent of scalable_xmr on purpose: the tests and bench/rerank_speed.py compare the
vectorised library against these. They follow the MTFN-RR reference script's loops (argsort per
list, look the query up with np.where) with the project's rules: stable ties (descending score,
lower index first), the reverse ranking over the whole gallery, and G(T, K') = T and its K'
nearest texts under a text-text similarity (T2I: the candidate text's group as Eq. 15 writes it,
or the query's group). ``queries`` restricts the work to some queries (for timing a subset).
"""

from __future__ import annotations

import numpy as np


def stable_desc(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` (1-D) by descending score, ties lower index first."""
    return np.argsort(-scores, kind="stable")


def rerank_i2t_loop(sim: np.ndarray, k: int, queries=None) -> dict[int, list[int]]:
    """Re-ranked text list of each image in ``queries`` (all by default)."""
    out = {}
    for i in range(sim.shape[0]) if queries is None else queries:
        initial = stable_desc(sim[i])
        positions = []
        for t in initial[:k]:
            image_ranking = stable_desc(sim[:, t])
            positions.append(int(np.where(image_ranking == i)[0][0]))
        new = [initial[j] for j in sorted(range(k), key=lambda j: (positions[j], j))]
        out[i] = [int(t) for t in new] + [int(t) for t in initial[k:]]
    return out


def text_group(text_sim: np.ndarray, t: int, k_text: int) -> list[int]:
    """G(t, K'): t and its K' nearest other texts (row t of ``text_sim``, stable)."""
    return [t] + [int(u) for u in stable_desc(text_sim[t]) if u != t][:k_text]


def rerank_t2i_loop(
    sim: np.ndarray, k: int, text_sim: np.ndarray, k_text: int, queries=None,
    groups: str = "candidate",
) -> dict[int, list[int]]:
    """Re-ranked image list of each text in ``queries`` (all by default).

    MTFN-RR Eq. 15: walk each candidate image's text ranking from the top and stop at the first
    text T_k with t in G(T_k, K') (``groups="candidate"``) or T_k in G(t, K') (``"query"``).
    """
    out, group_of = {}, {}  # group_of: G(u, K') of the texts met so far

    def group(u: int) -> list[int]:
        if u not in group_of:
            group_of[u] = text_group(text_sim, u, k_text)
        return group_of[u]

    for t in range(sim.shape[1]) if queries is None else queries:
        initial = stable_desc(sim[:, t])
        positions = []
        for i in initial[:k]:
            ranking = enumerate(int(u) for u in stable_desc(sim[i]))
            if groups == "query":  # the first T_k in the query's group G(t, K')
                positions.append(next(p for p, t_k in ranking if t_k in group(t)))
            else:  # Eq. 15: the first T_k whose own group G(T_k, K') holds t
                positions.append(next(p for p, t_k in ranking if t in group(t_k)))
        new = [initial[j] for j in sorted(range(k), key=lambda j: (positions[j], j))]
        out[t] = [int(i) for i in new] + [int(i) for i in initial[k:]]
    return out


def i2t_ranks_loop(sim: np.ndarray, n: int, queries=None) -> dict[int, int]:
    """VSE++ i2t: 0-based best rank of image i's n captions in its text ranking."""
    out = {}
    for i in range(sim.shape[0]) if queries is None else queries:
        inds = stable_desc(sim[i])
        out[i] = min(int(np.where(inds == j)[0][0]) for j in range(n * i, n * i + n))
    return out


def t2i_ranks_loop(sim: np.ndarray, n: int, queries=None) -> dict[int, int]:
    """VSE++ t2i: 0-based rank of caption j's image j // n in its image ranking."""
    out = {}
    for j in range(sim.shape[1]) if queries is None else queries:
        inds = stable_desc(sim[:, j])
        out[j] = int(np.where(inds == j // n)[0][0])
    return out


def recall_at_k_loop(sim: np.ndarray, n: int, ks=(1, 5, 10)) -> dict[str, float]:
    """VSE++ evaluation.py i2t / t2i metrics with stable ties."""
    out = {}
    for name, ranks in (("i2t", i2t_ranks_loop(sim, n)), ("t2i", t2i_ranks_loop(sim, n))):
        r = np.array([ranks[q] for q in sorted(ranks)])
        for k in ks:
            out[f"{name}@{k}"] = 100.0 * len(np.where(r < k)[0]) / len(r)
        out[f"{name}_medr"] = float(np.floor(np.median(r)) + 1)
        out[f"{name}_meanr"] = float(r.mean() + 1)
    out["rsum"] = sum(out[f"{d}@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out
