"""R@K of a trained branch model, plain and re-ranked, with K (and K') chosen on validation.

MTFN-RR (§3.2, Fig. 7) re-ranks after training; K and K' are cheap to sweep because
only the similarity matrices are needed. The protocol here:

1. :func:`rerank_grid` scores every K of a grid with I2T re-ranking and every (K, K') with T2I
   re-ranking on the VALIDATION split (K = 1 re-ranks nothing: it is the plain ranking, so the
   selection can never pick something worse than plain on val).
2. :func:`select_rerank` picks K for I2T and (K, K') for T2I independently (the two re-rankers
   change disjoint halves of R@K): the highest R@1 of that direction (MTFN-RR Fig. 7a plots R@1
   against K), then the highest R@1+R@5+R@10, then the smaller K and K'.
3. :func:`recall_report` applies the choice to the TEST split: plain and re-ranked R@K over all
   test images, plus the COCO "1K" protocol (5 folds of 1000 images, each re-ranked inside its
   fold) when the test split has exactly 5000 images (docs/metrics.md).

The text-text similarity for T2I is MTFN's S_TT or the cosine of text embeddings
(``branch.scoring``); nothing here reads which image a caption belongs to, except the
recall computation itself. ``t2i_groups`` picks T2I's neighbour groups (``rerank.rerank_t2i``):
"candidate" (Eq. 15 as written, the default) or "query"; the grid on val and the test figures
use the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from scalable_xmr.errors import InputError
from scalable_xmr.functional.rerank import T2I_GROUPS, rerank_i2t, rerank_t2i
from scalable_xmr.functional.retrieval import ArrayLike, as_float_matrix, recall_at_k
from scalable_xmr.functional.retrieval.checks import BLOCK_ELEMENTS, chunk_ranges

K_GRID = (1, 2, 5, 10, 15, 20)  # re-ranked list lengths tried on val (MTFN-RR Fig. 7a: 1..20)
K_TEXT_GRID = (0, 1, 2, 4, 8)  # neighbour texts K' of T2I re-ranking (MTFN-RR Eq. 14)
KS = (1, 5, 10)
COCO_5K, COCO_FOLDS = 5000, 5  # a 5000-image test split is scored as 5K and as 5 x 1K


@dataclass(frozen=True)
class RerankChoice:
    """K of I2T re-ranking, and (K, K') of T2I re-ranking."""

    k_i2t: int
    k_t2i: int
    k_text: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        return f"K {self.k_i2t} | K {self.k_t2i}, K' {self.k_text}"


@dataclass(frozen=True)
class RerankGrid:
    """Values tried on val: K for I2T (<= captions), K for T2I (<= images), K' (<= captions - 1)."""

    k_i2t: tuple[int, ...]
    k_t2i: tuple[int, ...]
    k_text: tuple[int, ...]


def rerank_grid_for(
    n_images: int,
    n_captions: int,
    ks: Sequence[int] | None = None,
    k_texts: Sequence[int] | None = None,
) -> RerankGrid:
    """The grid for a gallery of ``n_images`` x ``n_captions``: the default grids cut to the
    gallery, or the values given (InputError for a value that does not fit the gallery; one K
    serves both directions, so it must fit the smaller gallery, the images)."""
    if ks is not None:
        for k in ks:
            _check_int("k", k, 1, n_images, f"the gallery has {n_images} images")
    if k_texts is not None:
        for k_text in k_texts:
            _check_int("k_text", k_text, 0, n_captions - 1, f"the gallery has {n_captions} captions")
    k_i2t = tuple(ks) if ks is not None else tuple(v for v in K_GRID if v <= n_captions)
    k_t2i = tuple(ks) if ks is not None else tuple(v for v in K_GRID if v <= n_images)
    k_text = tuple(k_texts) if k_texts is not None else tuple(v for v in K_TEXT_GRID if v < n_captions)
    if not (k_i2t and k_t2i and k_text):
        raise InputError(f"the re-ranking grid is empty for {n_images} images x {n_captions} captions")
    return RerankGrid(k_i2t, k_t2i, k_text)


def _check_int(name: str, value: Any, low: int, high: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if value > high:
        raise InputError(f"{name}={value} is larger than the gallery allows ({high}): {why}")


def _direction(metrics: dict[str, float], direction: str) -> dict[str, float]:
    return {f"{direction}@{k}": metrics[f"{direction}@{k}"] for k in KS}


def check_t2i_groups(value: str, name: str = "t2i_groups") -> str:
    """``value`` if it is one of rerank.T2I_GROUPS, else InputError naming ``name`` (a flag)."""
    if value not in T2I_GROUPS:
        raise InputError(f"{name} must be one of {', '.join(T2I_GROUPS)}, got {value!r}")
    return value


def _check_pair(sim: ArrayLike, text_sim: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    s = as_float_matrix(sim, "sim")
    ts = as_float_matrix(text_sim, "text_sim")
    if ts.shape != (s.shape[1], s.shape[1]):
        raise InputError(f"text_sim must be ({s.shape[1]}, {s.shape[1]}) for sim {tuple(s.shape)} "
                         f"(captions x captions), got {tuple(ts.shape)}")
    return s, ts


def rerank_grid(
    sim: ArrayLike, text_sim: ArrayLike, captions_per_image: int, grid: RerankGrid,
    t2i_groups: str = "candidate",
) -> dict[str, list[dict[str, float]]]:
    """R@1/5/10 of I2T re-ranking for every K and of T2I re-ranking for every (K, K').

    Returns ``{"i2t": [{"k", "i2t@1", "i2t@5", "i2t@10"}, ...], "t2i": [{"k", "k_text",
    "t2i@1", ...}, ...]}`` in grid order; T2I with ``t2i_groups`` ("candidate" or "query").
    """
    check_t2i_groups(t2i_groups)
    s, ts = _check_pair(sim, text_sim)
    rows: dict[str, list[dict[str, float]]] = {"i2t": [], "t2i": []}
    for k in grid.k_i2t:
        m = recall_at_k(rerank_i2t(s, k), captions_per_image, KS)
        rows["i2t"].append({"k": k, **_direction(m, "i2t")})
    for k in grid.k_t2i:
        for k_text in grid.k_text:
            m = recall_at_k(rerank_t2i(s, k, ts, k_text, t2i_groups), captions_per_image, KS)
            rows["t2i"].append({"k": k, "k_text": k_text, **_direction(m, "t2i")})
    return rows


def _score(row: dict[str, float], direction: str) -> tuple[float, ...]:
    """Higher is better: R@1, then R@1+R@5+R@10, then smaller K and K'."""
    total = sum(row[f"{direction}@{k}"] for k in KS)
    return (row[f"{direction}@1"], total, -row["k"], -row.get("k_text", 0))


def select_rerank(grid_rows: dict[str, list[dict[str, float]]]) -> RerankChoice:
    """The best K for I2T and (K, K') for T2I on the grid's split (see the module docstring)."""
    if not grid_rows.get("i2t") or not grid_rows.get("t2i"):
        raise InputError("select_rerank: the grid is empty (no K fits the gallery)")
    best_i2t = max(grid_rows["i2t"], key=lambda r: _score(r, "i2t"))
    best_t2i = max(grid_rows["t2i"], key=lambda r: _score(r, "t2i"))
    return RerankChoice(int(best_i2t["k"]), int(best_t2i["k"]), int(best_t2i["k_text"]))


def reranked_recall(
    sim: ArrayLike, text_sim: ArrayLike, captions_per_image: int, choice: RerankChoice,
    t2i_groups: str = "candidate",
) -> dict[str, float]:
    """R@K after re-ranking: i2t from ``rerank_i2t(K)``, t2i from ``rerank_t2i(K, K', t2i_groups)``."""
    check_t2i_groups(t2i_groups)
    s, ts = _check_pair(sim, text_sim)
    i2t = recall_at_k(rerank_i2t(s, choice.k_i2t), captions_per_image, KS)
    t2i = recall_at_k(rerank_t2i(s, choice.k_t2i, ts, choice.k_text, t2i_groups), captions_per_image, KS)
    out = {k: v for k, v in i2t.items() if k.startswith("i2t")}
    out.update({k: v for k, v in t2i.items() if k.startswith("t2i")})
    out["rsum"] = sum(out[f"{d}@{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


def _mean(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(sum(d[key] for d in dicts) / len(dicts)) for key in dicts[0]}


def recall_report(
    sim: ArrayLike, text_sim: ArrayLike, captions_per_image: int, choice: RerankChoice | None,
    t2i_groups: str = "candidate",
) -> dict[str, dict[str, float]]:
    """Plain (and, with ``choice``, re-ranked) R@K of a test split.

    Keys ``plain`` / ``rerank``: over all images (the "5K" numbers for a 5000-image split).
    For a 5000-image split also ``plain_1k`` / ``rerank_1k``: the mean over 5 folds of 1000
    images and their captions, each fold re-ranked on its own sub-matrices (COCO 1K). T2I
    re-ranking uses ``t2i_groups`` ("candidate" or "query").
    """
    check_t2i_groups(t2i_groups)
    s, ts = _check_pair(sim, text_sim)
    n = captions_per_image
    out = {"plain": recall_at_k(s, n, KS)}
    if choice is not None:
        out["rerank"] = reranked_recall(s, ts, n, choice, t2i_groups)
    if s.shape[0] == COCO_5K:
        m = COCO_5K // COCO_FOLDS
        folds = [(slice(f * m, (f + 1) * m), slice(f * m * n, (f + 1) * m * n)) for f in range(COCO_FOLDS)]
        out["plain_1k"] = _mean([recall_at_k(s[i, c], n, KS) for i, c in folds])
        if choice is not None:
            out["rerank_1k"] = _mean([reranked_recall(s[i, c], ts[c, c], n, choice, t2i_groups)
                                      for i, c in folds])
    return out


def average_similarities(mats: Sequence[ArrayLike], name: str = "sim") -> torch.Tensor:
    """Element-wise mean of M similarity matrices of one shape (paper 001's ensembles)."""
    if not mats:
        raise InputError(f"{name}: no matrices to average")
    first = as_float_matrix(mats[0], f"{name}[0]")
    total = first.to(torch.float64).clone()
    for i, m in enumerate(mats[1:], start=1):
        t = as_float_matrix(m, f"{name}[{i}]")
        if t.shape != first.shape:
            raise InputError(f"{name}[{i}] has shape {tuple(t.shape)}, {name}[0] has {tuple(first.shape)}")
        total += t
    return (total / len(mats)).to(torch.float32)


def mean_sigmoid_log_odds(
    logits: Sequence[ArrayLike], offsets: Sequence[float], name: str = "sim"
) -> torch.Tensor:
    """log(p / (1 - p)) of p = mean_m sigmoid(logits[m] + offsets[m]), float64, one shape.

    An MTFN ensemble (MTFN-RR §4, Table 4) averages its members' S_IT = sigmoid(W_m f + b_m)
    (Eq. 4); the members store W_m f (``logits``), and ``offsets`` are their b_m. A mean of
    sigmoids does not rank like a mean of logits: two members scoring two pairs (10, 2) and
    (-6, 1) average to logits (2, 1.5) but to sigmoids (0.50, 0.81): the top pair flips.

    The result is strictly increasing in p, so it ranks exactly as p, but keeps the resolution
    p itself loses where sigmoids saturate (float32 sigmoid(30..40) is 1.0 throughout; a
    float64 sigmoid rounds to 1.0 beyond ~37): log p = logsumexp_m logsigmoid(x_m) - log M
    and log(1 - p) = logsumexp_m logsigmoid(-x_m) - log M (the log M cancel) stay exact at
    either end. One member gives its own logit + offset back. Computed in row blocks.

    Example:
        >>> import numpy as np
        >>> a, b = np.array([[10.0, 2.0]]), np.array([[-6.0, 1.0]])  # 2 members x 2 pairs
        >>> int(((a + b) / 2).argmax()), int(mean_sigmoid_log_odds([a, b], [0.0, 0.0]).argmax())
        (0, 1)
        >>> mean_sigmoid_log_odds([np.array([[30.0, 40.0]])], [0.5]).tolist()
        [[30.5, 40.5]]
    """
    if not logits:
        raise InputError(f"{name}: no matrices to average")
    if len(offsets) != len(logits):
        raise InputError(f"{name}: {len(offsets)} offsets for {len(logits)} matrices")
    mats = [as_float_matrix(m, f"{name}[{i}]") for i, m in enumerate(logits)]
    for i, m in enumerate(mats[1:], start=1):
        if m.shape != mats[0].shape:
            raise InputError(f"{name}[{i}] has shape {tuple(m.shape)}, {name}[0] has {tuple(mats[0].shape)}")
    n_rows, n_cols = mats[0].shape
    out = torch.empty(n_rows, n_cols, dtype=torch.float64)
    rows = max(1, BLOCK_ELEMENTS // (n_cols * len(mats)))  # temporaries of ~one block per member
    for r0, r1 in chunk_ranges(n_rows, rows):
        x = [m[r0:r1].to(torch.float64) + float(b) for m, b in zip(mats, offsets, strict=True)]
        log_p = torch.logsumexp(torch.stack([F.logsigmoid(v) for v in x]), dim=0)  # (B, n_cols)
        log_q = torch.logsumexp(torch.stack([F.logsigmoid(-v) for v in x]), dim=0)
        out[r0:r1] = log_p - log_q
    return out


# The printed columns: R@1/5/10, median and mean rank per direction (VSE++ evaluation.py), rsum.
ROW_KEYS = ("i2t@1", "i2t@5", "i2t@10", "i2t_medr", "i2t_meanr",
            "t2i@1", "t2i@5", "t2i@10", "t2i_medr", "t2i_meanr", "rsum")


def recall_table(
    rows: Sequence[tuple[str, dict[str, float]]], title: str = "", keys: Sequence[str] = ROW_KEYS
) -> str:
    """A fixed-width R@K table: one ``(label, metrics)`` row per line, a column per key."""
    width = max([len(label) for label, _ in rows] + [5])
    cols = [(k, max(7, len(k))) for k in keys]
    head = f"{'model':<{width}}  " + " ".join(f"{k:>{w}}" for k, w in cols)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for label, metrics in rows:
        lines.append(f"{label:<{width}}  " + " ".join(f"{metrics[k]:>{w}.1f}" for k, w in cols))
    return "\n".join(lines)
