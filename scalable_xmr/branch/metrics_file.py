"""``<run>/metrics.json`` of a branch-model run: :class:`BranchMetrics`, its one writer and reader.

The file (docs/metrics.md) holds each member's and each ensemble's test R@K, plain and re-ranked,
the val grid and the re-ranking choice, and, with a VSA target domain, the target's R@K::

    {"kind": "branch", "dataset": "<uri>", "test": {"images", "captions_per_image", "protocol"},
     "models": {"<member>": {...}}, "ensembles": {"<model>": {"members": [...], ...}},
     "target": {"dataset", "splits", "protocol", "selected_on"}}   # only with a target

Runs made up to 0.1.0 say ``"kind": "pairs"`` (README "Upgrading"); they read the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_write_json, read_json
from scalable_xmr.store.meta import current_kind
from scalable_xmr.store.run_store import RunStore

KIND = "branch"


@dataclass(frozen=True)
class BranchMetrics:
    """metrics.json of a branch-model run (entries keep the names docs/metrics.md fixes)."""

    dataset: str  # the paired dataset's absolute URI
    test: dict[str, Any]  # images, captions_per_image, protocol
    models: dict[str, dict[str, Any]]  # member -> model, seed, plain/rerank R@K, choice, val, val_grid...
    ensembles: dict[str, dict[str, Any]]  # model -> members, plain/rerank R@K, choice, val_grid...
    target: dict[str, Any] | None = None  # VSA's target domain: dataset, splits, protocol, selected_on

    def to_json(self) -> dict[str, Any]:
        out = {"kind": KIND, "dataset": self.dataset, "test": self.test, "models": self.models,
               "ensembles": self.ensembles}
        if self.target is not None:
            out["target"] = self.target
        return out

    @classmethod
    def from_json(cls, values: Any, source: str) -> BranchMetrics:
        """Check a parsed metrics.json; errors name ``source`` and the key."""
        if not isinstance(values, dict) or current_kind(values.get("kind")) != KIND:
            kind = values.get("kind") if isinstance(values, dict) else None
            raise InputError(f"{source}: not the metrics.json of a branch-model run (kind {kind!r})")
        known = ("kind", "dataset", "test", "models", "ensembles", "target")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        missing = [k for k in known[1:5] if k not in values]
        if missing:
            raise InputError(f"{source}: missing key {missing[0]!r}")
        return cls(values["dataset"], values["test"], values["models"], values["ensembles"],
                   values.get("target"))

    def write(self, store: RunStore) -> None:
        atomic_write_json(store.metrics_path, self.to_json())

    @classmethod
    def read(cls, store: RunStore) -> BranchMetrics | None:
        """The run's metrics.json, or None before the run has finished once."""
        path = store.metrics_path
        return cls.from_json(read_json(path), str(path)) if path.is_file() else None

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, entry) of every member, then every ensemble (``"<model> ensemble xM"``)."""
        return [*self.models.items(),
                *((f"{m} ensemble x{len(e['members'])}", e) for m, e in self.ensembles.items())]
