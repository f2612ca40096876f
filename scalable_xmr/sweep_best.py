"""``<sweep>/best.json``: the configuration a sweep chose, :class:`SweepBest` (its one writer and
reader).

``xmr sweep`` writes it once the sweep finishes (tuning/sweep.py); the training jobs read it with
``--config best.json`` (``xmr train`` / ``xmr add-modality``: an SDML sweep's per-modality
configurations; ``xmr train-pairs``: a branch model's configuration). A light module (no torch,
no Ray), so a training command reads it before anything heavy is imported. Layout (docs/cli.md)::

    {"model": "sdml" | "<branch model>", "dataset": {...}, "schedule": {"trials", "final"},
     SDML:   "projection": {...}, "per_modality": {m: {"config": {...}, "trial_id", ...}},
             "cross_modal": {...}   (the chosen combination scored on test once)
     branch: "config": {...}, "trial_id", "trial_dir", "val": {...}, "rerank": {...},
             "test": {...}          (the chosen trial scored on test once)
     "sweep", "metric", "mode", "epochs", "n_trials", "created"}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_write_json, read_json

BEST_FILE = "best.json"
SDML = "sdml"
# Written whatever they hold (null included); the rest only where the sweep's model family has them.
COMMON = ("dataset", "schedule", "sweep", "metric", "mode", "epochs", "n_trials", "created")


@dataclass(frozen=True)
class SweepBest:
    """The content of ``best.json``; the sections of the other model family are None (absent)."""

    model: str  # "sdml", or the branch model the sweep tuned
    dataset: dict[str, Any] | None = None
    schedule: dict[str, str] | None = None  # trials: what the trials ran; final: what training runs
    # ---- SDML sweeps
    projection: dict[str, Any] | None = None
    per_modality: dict[str, dict[str, Any]] | None = None  # m -> config, trial_id, anchor_map, ...
    cross_modal: dict[str, Any] | None = None
    # ---- branch-model sweeps
    config: dict[str, Any] | None = None  # tuned and fixed values (PairTrainerConfig, model config)
    trial_id: str | None = None
    trial_dir: str | None = None
    val: dict[str, Any] | None = None
    rerank: dict[str, Any] | None = None  # the trial's K / K' choice on val
    test: dict[str, Any] | None = None
    # ---- the sweep
    sweep: str | None = None
    metric: str | None = None
    mode: str | None = None
    epochs: int | None = None
    n_trials: int | None = None
    created: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k in COMMON}

    @classmethod
    def from_json(cls, values: Any, source: str) -> SweepBest:
        """A parsed best.json; errors name ``source``. Keys this version does not know are
        ignored: a best.json is only ever read for its configuration, never rewritten."""
        if not isinstance(values, dict) or not isinstance(values.get("model"), str):
            model = values.get("model") if isinstance(values, dict) else None
            raise InputError(f"{source}: not a best.json of `xmr sweep` (model {model!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        best = cls(**{k: v for k, v in values.items() if k in names})
        section, name = (best.per_modality, "per_modality") if best.model == SDML else (best.config, "config")
        if section is not None and not isinstance(section, dict):
            raise InputError(f"{source}: '{name}' must be an object, got {section!r}")
        return best

    def write(self, sweep_dir: str | Path) -> Path:
        path = Path(sweep_dir) / BEST_FILE
        atomic_write_json(path, self.to_json())
        return path

    @classmethod
    def read(cls, path: str | Path, source: str | None = None) -> SweepBest:
        """``path`` (a best.json); errors name ``source`` (default: the path)."""
        return cls.from_json(read_json(path), source or str(path))
