"""Cross-modal evaluation of a run from its stored test embeddings (docs/metrics.md).

Every ordered pair (query modality q, target modality t), q ≠ t: mAP@all (and mAP@k when asked)
with cosine similarity and share-a-label relevance, computed in chunks of queries. Works from the
embeddings in the run store alone, so adding a modality later scores only the new pairs.

mAP@k is stored in metrics.json as ``map_at_k = {"k": k, "no_relevant": "zero" | "skip", "<q>-<t>":
value, ...}``: ``no_relevant`` says how a query with no relevant item in its top k was scored
(``functional.retrieval.average_precision``); files written before it existed used "zero".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from scalable_xmr.functional.retrieval import check_no_relevant, mean_average_precision
from scalable_xmr.store.meta import now_iso
from scalable_xmr.store.run_store import RunStore

Embeddings = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # m -> (ids, labels, emb)
AT_K_SETTINGS = ("k", "no_relevant")  # the keys of metrics["map_at_k"] that are not pairs


def pair_key(query: str, target: str) -> str:
    return f"{query}-{target}"


def load_test_embeddings(store: RunStore, modalities: Iterable[str], n_classes: int,
                         split: str = "test") -> Embeddings:
    return {m: store.read_embeddings(m, split, n_classes) for m in modalities}


def pair_maps(
    emb: Embeddings, pairs: Sequence[tuple[str, str]], top_k: int | None = None,
    no_relevant: str = "zero",
) -> dict[str, float]:
    """mAP (or mAP@k) of each ordered pair; keys ``"<query>-<target>"``. ``no_relevant``: how a
    query with no relevant item in the ranks scored counts ("zero" or "skip")."""
    out = {}
    for q, t in pairs:
        _, q_labels, q_emb = emb[q]
        _, t_labels, t_emb = emb[t]
        out[pair_key(q, t)] = mean_average_precision(q_emb, t_emb, q_labels, t_labels, top_k=top_k,
                                                     no_relevant=no_relevant)
    return out


def stored_maps_at_k(metrics: dict[str, Any], top_k: int, no_relevant: str) -> dict[str, float]:
    """The per-pair mAP@k values of stored ``metrics`` if they were computed with this ``top_k``
    and ``no_relevant`` (files without ``no_relevant`` used "zero"), else none."""
    at_k = metrics.get("map_at_k") or {}
    if at_k.get("k") != top_k or at_k.get("no_relevant", "zero") != no_relevant:
        return {}
    return {key: v for key, v in at_k.items() if key not in AT_K_SETTINGS}


def all_pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    return [(q, t) for q in modalities for t in modalities if q != t]


def pairs_involving(new: Sequence[str], modalities: Sequence[str]) -> list[tuple[str, str]]:
    """Ordered pairs with at least one new modality (the only ones an added modality changes)."""
    return [(q, t) for q, t in all_pairs(modalities) if q in new or t in new]


def build_metrics(
    maps: dict[str, float], modalities: Sequence[str], maps_at_k: dict[str, float] | None = None,
    top_k: int | None = None, n_test: dict[str, int] | None = None, no_relevant: str = "zero",
) -> dict[str, Any]:
    ordered = {pair_key(q, t): maps[pair_key(q, t)] for q, t in all_pairs(modalities)}
    metrics: dict[str, Any] = {
        "modalities": list(modalities),
        "map": ordered,
        "map_mean": float(np.mean(list(ordered.values()))) if ordered else float("nan"),
        "updated": now_iso(),
    }
    if maps_at_k:
        metrics["map_at_k"] = {"k": top_k, "no_relevant": check_no_relevant(no_relevant), **maps_at_k}
    if n_test:
        metrics["n_test"] = n_test
    return metrics


def map_table(metrics: dict[str, Any]) -> str:
    """Query rows x target columns, with each row's mean and the overall mean."""
    mods = metrics["modalities"]
    width = max(9, *(len(m) for m in mods))
    head = f"{'query↓ target→':<{width + 5}}" + "".join(f"{m:>{width}}" for m in mods) + f"{'mean':>{width}}"
    lines = [head, "-" * len(head)]
    for q in mods:
        vals = [metrics["map"].get(pair_key(q, t)) for t in mods]
        row_vals = [v for v in vals if v is not None]
        cells = "".join(f"{'—':>{width}}" if v is None else f"{v:>{width}.4f}" for v in vals)
        mean = f"{np.mean(row_vals):>{width}.4f}" if row_vals else f"{'—':>{width}}"
        lines.append(f"{q:<{width + 5}}{cells}{mean}")
    lines.append("-" * len(head))
    if not metrics["map"]:  # a run of one modality: nothing to retrieve across yet
        lines.append("no cross-modal pair yet: add a modality with `xmr add-modality`")
        return "\n".join(lines)
    lines.append(f"mean mAP over {len(metrics['map'])} ordered pairs: {metrics['map_mean']:.4f}")
    return "\n".join(lines)
