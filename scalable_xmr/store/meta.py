"""The run.json schema: one typed record for both kinds of run (docs/run-store.md).

Every job builds, changes and writes run.json through :class:`RunMeta`; reading one checks it
against this schema, so a hand-edited or foreign file is refused with the file and the key named.
Sections of one kind of run are ``None`` (and absent from the file) in the other.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import platform
from dataclasses import dataclass, field
from typing import Any

from scalable_xmr.errors import InputError
from scalable_xmr.version import __version__

FORMAT_VERSION = 1
KINDS = ("sdml", "branch")
# Kinds an older version wrote -> the kind they are now: runs of the image-text branch models were
# kind "pairs" up to 0.1.0 (README "Upgrading"): read as "branch", and written back so.
OLD_KINDS = {"pairs": "branch"}
STATUSES = ("running", "failed", "finished")


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """The versions a run was made with (read from package metadata: nothing is imported)."""
    return {"scalable_xmr": __version__, "python": platform.python_version(),
            **{name: importlib.metadata.version(name) for name in ("torch", "ray", "pyarrow", "numpy")}}


def current_kind(kind: Any) -> Any:
    """``kind`` as this version names it (:data:`OLD_KINDS`); other values are left to be checked."""
    return OLD_KINDS.get(kind, kind) if isinstance(kind, str) else kind


@dataclass
class RunMeta:
    """The content of ``<run>/run.json``."""

    kind: str  # "sdml" (xmr train / add-modality) or "branch" (xmr train-pairs)
    dataset: dict[str, Any]  # uri, name; SDML: n_classes, multi_label, class_names; branch: splits
    status: str = "running"  # running -> finished, or failed (with error)
    created: str = field(default_factory=now_iso)
    updated: str | None = None  # set by every write
    versions: dict[str, str] = field(default_factory=versions)
    mlflow: dict[str, Any] | None = None  # tracking_uri, experiment_id, parent_run_id
    error: str | None = None  # why the last job failed (status "failed")
    format: int = FORMAT_VERSION
    # ---- SDML runs
    projection: dict[str, Any] | None = None  # file, sha256, dim, n_classes, seed
    sdml: dict[str, Any] | None = None  # the base SDMLConfig
    strategy: str | None = None  # parallel | serial | joint
    modalities: dict[str, dict[str, Any]] | None = None  # per modality: status, config, results
    additions: list[dict[str, Any]] | None = None  # one entry per add-modality job
    # ---- branch-model runs
    target: str | None = None  # VSA's unpaired target-domain dataset
    models: list[str] | None = None
    ensemble: int | None = None  # members per model
    rerank: dict[str, Any] | None = None  # ks, k_texts, t2i_groups
    members: dict[str, dict[str, Any]] | None = None  # per member: status, settings, results

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"run.json: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.status not in STATUSES:
            raise InputError(f"run.json: status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to run.json (sections of the other kind of run left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, values: Any, source: str) -> RunMeta:
        """Check ``values`` (a parsed run.json) against the schema; errors name ``source``."""
        if not isinstance(values, dict) or values.get("format") != FORMAT_VERSION:
            raise InputError(f"{source}: not a scalable_xmr run.json (format {FORMAT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
        missing = [k for k in ("kind", "dataset") if k not in values]
        if missing:
            raise InputError(f"{source}: missing key {missing[0]!r}")
        try:
            return cls(**{**values, "kind": current_kind(values["kind"])})
        except InputError as e:
            raise InputError(f"{source}: {str(e).removeprefix('run.json: ')}") from None

    def fail(self, error: BaseException) -> None:
        self.status, self.error = "failed", f"{type(error).__name__}: {error}"

    def finish(self) -> None:
        self.status, self.error = "finished", None

    def finished_modalities(self) -> list[str]:
        return [m for m, v in (self.modalities or {}).items() if v.get("status") == "finished"]
