"""Typed, frozen configs built once at the boundary (CLI, JSON, Tune dicts).

``from_dict`` refuses unknown keys (a misspelt key must never be silently ignored) and checks every
value's domain with a message that names the key and the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from scalable_xmr.errors import InputError

T = TypeVar("T")

STRATEGIES = ("parallel", "serial", "joint")


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build the dataclass ``cls`` from ``values``; unknown keys raise naming the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    return cls(**values)


@dataclass(frozen=True)
class SDMLConfig:
    """Hyperparameters of one modality's supervised autoencoder (DESIGN.md §4, SDML §4.2).

    ``lr=None`` picks the reference code's per-modality rate: 1e-4 for image-like high-dimensional
    modalities (dim >= 1024), 2e-4 otherwise.
    """

    dim: int = 512  # d: common-space size = rows of P (SDML sets 512 for XMedia's networks)
    hidden: int = 1024  # encoder dim→1024→1024→d, decoder mirrored (reference architecture)
    lam: float = 0.5  # λ of Eq. (1); paper Fig. 5 picks 0.5
    lr: float | None = None
    batch_size: int = 100  # paper / reference code
    epochs: int = 200  # paper §4.5: converges in 100-200 epochs
    normalize: bool = True  # per-feature standardisation fitted on train (deviation, DESIGN §4)
    checkpoint_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise InputError(f"lam must be in [0, 1], got {self.lam}")
        for name in ("dim", "hidden", "batch_size", "epochs", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr}")

    def lr_for(self, input_dim: int) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if input_dim >= 1024 else 2e-4

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ResourceConfig:
    """How the work is placed on a Ray cluster (DESIGN.md §6)."""

    strategy: str = "parallel"  # parallel = SDML-3, serial = SDML-2, joint = SDML-1 (Table 6)
    gpus_per_modality: float = 0.0  # fractional allowed, packs small modalities on one GPU
    cpus_per_modality: float | None = None  # None: share the cluster's CPUs out evenly
    max_restarts: int = 2
    placement_timeout_s: float = 600.0  # how long to wait for an autoscaler to bring up nodes

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.gpus_per_modality < 0:
            raise InputError(f"gpus-per-modality must be >= 0, got {self.gpus_per_modality}")
        if self.cpus_per_modality is not None and self.cpus_per_modality <= 0:
            raise InputError(f"cpus-per-modality must be > 0, got {self.cpus_per_modality}")
        if self.max_restarts < 0:
            raise InputError(f"max-restarts must be >= 0, got {self.max_restarts}")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings (DESIGN.md §8); the driver alone talks to MLflow."""

    tracking_uri: str | None = None  # None: sqlite:///<abs parent of the run>/mlflow.db
    experiment: str = "scalable_xmr"
    enabled: bool = True


@dataclass(frozen=True)
class ModalityOverrides:
    """Per-modality hyperparameters (e.g. the winners of a per-modality sweep)."""

    per_modality: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config_for(self, base: SDMLConfig, modality: str) -> SDMLConfig:
        values = self.per_modality.get(modality, {})
        if not values:
            return base
        merged = {**base.to_dict(), **values}
        return from_dict(SDMLConfig, merged, source=f"config for modality {modality!r}")
