"""Cross-modal evaluation of a run from its stored test embeddings (docs/metrics.md).

Every ordered pair (query modality q, target modality t), q ≠ t: mAP@all (and mAP@k when asked)
with cosine similarity and share-a-label relevance, computed in chunks of queries. Works from the
embeddings in the run store alone, so adding a modality later scores only the new pairs.

metrics.json of an SDML run is :class:`SDMLMetrics`, its one writer and reader (docs/metrics.md).
mAP@k is stored in it as ``map_at_k = {"k": k, "no_relevant": "zero" | "skip", "<q>-<t>": value,
...}`` (:class:`MapAtK`): ``no_relevant`` says how a query with no relevant item in its top k was
scored (``functional.retrieval.average_precision``); files written before it existed used "zero".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval import check_no_relevant, mean_average_precision
from scalable_xmr.io import atomic_write_json, read_json
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


@dataclass(frozen=True)
class MapAtK:
    """metrics.json's ``map_at_k``: each ordered pair's mAP@k, the k, and how a query with no
    relevant item in its top k counted (``no_relevant``: "zero" or "skip")."""

    k: int
    no_relevant: str
    maps: dict[str, float]  # "<query>-<target>" -> mAP@k

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "no_relevant": check_no_relevant(self.no_relevant), **self.maps}

    @classmethod
    def from_json(cls, values: Any, source: str) -> MapAtK:
        if not isinstance(values, dict) or not isinstance(values.get("k"), int):
            raise InputError(f"{source}: map_at_k must be an object with an integer 'k', got {values!r}")
        maps = {key: float(v) for key, v in values.items() if key not in AT_K_SETTINGS}
        return cls(values["k"], values.get("no_relevant", "zero"), maps)  # no "no_relevant": "zero"


@dataclass(frozen=True)
class SDMLMetrics:
    """``<run>/metrics.json`` of an SDML run: the mAP of every ordered pair and their mean (the
    names docs/metrics.md fixes), mAP@k when asked, the test split's size per modality."""

    modalities: list[str]
    map: dict[str, float]  # "<query>-<target>" -> mAP
    map_mean: float  # NaN for a run of one modality (no pair yet)
    updated: str | None = None
    map_at_k: MapAtK | None = None
    n_test: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"modalities": list(self.modalities), "map": dict(self.map),
                               "map_mean": self.map_mean}
        if self.updated is not None:
            out["updated"] = self.updated
        if self.map_at_k is not None:
            out["map_at_k"] = self.map_at_k.to_json()
        if self.n_test:
            out["n_test"] = dict(self.n_test)
        return out

    @classmethod
    def from_json(cls, values: Any, source: str) -> SDMLMetrics:
        """Check a parsed metrics.json; errors name ``source`` and the key."""
        if not isinstance(values, dict):
            raise InputError(f"{source}: not an SDML metrics.json (an object with modalities, map, map_mean)")
        unknown = sorted(set(values) - set(METRICS_KEYS))
        if unknown:
            raise InputError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(METRICS_KEYS)})")
        missing = [k for k in ("modalities", "map", "map_mean") if k not in values]
        if missing:
            raise InputError(f"{source}: missing key {missing[0]!r}")
        at_k = values.get("map_at_k")
        return cls(list(values["modalities"]), {k: float(v) for k, v in values["map"].items()},
                   float(values["map_mean"]), values.get("updated"),
                   MapAtK.from_json(at_k, source) if at_k else None, values.get("n_test"))

    def write(self, store: RunStore) -> None:
        atomic_write_json(store.metrics_path, self.to_json())

    @classmethod
    def read(cls, store: RunStore) -> SDMLMetrics | None:
        """The run's metrics.json, or None before its first evaluation."""
        path = store.metrics_path
        return cls.from_json(read_json(path), str(path)) if path.is_file() else None

    def stored_maps_at_k(self, top_k: int, no_relevant: str) -> dict[str, float]:
        """The per-pair mAP@k values if they were computed with this ``top_k`` and ``no_relevant``,
        else none."""
        at_k = self.map_at_k
        if at_k is None or at_k.k != top_k or at_k.no_relevant != no_relevant:
            return {}
        return dict(at_k.maps)


METRICS_KEYS = tuple(f for f in SDMLMetrics.__dataclass_fields__)


def all_pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    return [(q, t) for q in modalities for t in modalities if q != t]


def pairs_involving(new: Sequence[str], modalities: Sequence[str]) -> list[tuple[str, str]]:
    """Ordered pairs with at least one new modality (the only ones an added modality changes)."""
    return [(q, t) for q, t in all_pairs(modalities) if q in new or t in new]


def build_metrics(
    maps: dict[str, float], modalities: Sequence[str], maps_at_k: dict[str, float] | None = None,
    top_k: int | None = None, n_test: dict[str, int] | None = None, no_relevant: str = "zero",
) -> SDMLMetrics:
    ordered = {pair_key(q, t): maps[pair_key(q, t)] for q, t in all_pairs(modalities)}
    at_k = None
    if maps_at_k:
        assert top_k is not None, "mAP@k values without their k"
        at_k = MapAtK(top_k, check_no_relevant(no_relevant), dict(maps_at_k))
    return SDMLMetrics(list(modalities), ordered,
                       float(np.mean(list(ordered.values()))) if ordered else float("nan"),
                       now_iso(), at_k, n_test or None)


def map_table(metrics: SDMLMetrics) -> str:
    """Query rows x target columns, with each row's mean and the overall mean."""
    mods = metrics.modalities
    width = max(9, *(len(m) for m in mods))
    head = f"{'query↓ target→':<{width + 5}}" + "".join(f"{m:>{width}}" for m in mods) + f"{'mean':>{width}}"
    lines = [head, "-" * len(head)]
    for q in mods:
        vals = [metrics.map.get(pair_key(q, t)) for t in mods]
        row_vals = [v for v in vals if v is not None]
        cells = "".join(f"{'—':>{width}}" if v is None else f"{v:>{width}.4f}" for v in vals)
        mean = f"{np.mean(row_vals):>{width}.4f}" if row_vals else f"{'—':>{width}}"
        lines.append(f"{q:<{width + 5}}{cells}{mean}")
    lines.append("-" * len(head))
    if not metrics.map:  # a run of one modality: nothing to retrieve across yet
        lines.append("no cross-modal pair yet: add a modality with `xmr add-modality`")
        return "\n".join(lines)
    lines.append(f"mean mAP over {len(metrics.map)} ordered pairs: {metrics.map_mean:.4f}")
    return "\n".join(lines)
