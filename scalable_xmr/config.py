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
        raise InputError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    return cls(**values)


# The SDML authors' reference code trains the image network with Adam at 1e-4 and every other
# modality's (text, audio, 3d, video) at 2e-4; the paper itself gives no rate. We follow the code
# by modality *name*: a dataset without an "image" modality trains every network at 2e-4.
SDML_IMAGE_LR = 1e-4
SDML_OTHER_LR = 2e-4


@dataclass(frozen=True)
class SDMLConfig:
    """Hyperparameters of one modality's supervised autoencoder (docs/models.md, SDML §4.2).

    ``lr=None`` picks the reference code's per-modality rate (:meth:`lr_for`): 1e-4 for the
    modality named "image", 2e-4 for every other one. The jobs resolve it per modality
    (:meth:`resolved`), so run.json and MLflow record the rate actually used.
    """

    dim: int = 512  # d: common-space size = rows of P (SDML sets 512 for XMedia's networks)
    hidden: int = 1024  # encoder dim→1024→1024→d, decoder mirrored (reference architecture)
    lam: float = 0.5  # λ of Eq. (1); paper Fig. 5 picks 0.5
    lr: float | None = None
    batch_size: int = 100  # paper / reference code
    epochs: int = 200  # paper §4.5: converges in 100-200 epochs
    normalize: bool = True  # per-feature standardisation fitted on train (deviation, docs/models.md)
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

    def lr_for(self, modality: str) -> float:
        """The Adam rate of ``modality``: ``lr`` when set, else the reference code's rule."""
        if not isinstance(modality, str):  # the rule is by name (it once took the input dim)
            raise TypeError(f"lr_for takes a modality name, got {modality!r}")
        if self.lr is not None:
            return self.lr
        return SDML_IMAGE_LR if modality == "image" else SDML_OTHER_LR

    def resolved(self, modality: str) -> SDMLConfig:
        """This config with ``lr`` filled in for ``modality`` (what run.json and MLflow record)."""
        return dataclasses.replace(self, lr=self.lr_for(modality))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainSchedule:
    """A branch model's training schedule as its paper gives it (docs/models.md).

    Each branch model's config class owns one as ``schedule`` (a class attribute, not a field:
    it is not part of the architecture that ``model.pt`` stores). ``PairTrainerConfig`` takes
    these values unless a flag overrides them. The lr steps down by ``lr_decay`` every
    ``lr_decay_epochs`` epochs (VSE++'s code; 0 = constant); with a model's own ``epochs`` that
    is exactly the decay its paper describes.
    """

    epochs: int  # image-text epochs
    batch_size: int
    lr: float  # Adam's initial rate
    lr_decay_epochs: int
    lr_decay: float
    source: str  # where the values come from (shown by --help)
    note: str = ""  # what the paper leaves open and what we chose (shown by --help)

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 2), ("lr_decay_epochs", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(f"schedule {name}: must be an integer >= {low}, got {value!r}")
        for name in ("lr", "lr_decay"):
            if not getattr(self, name) > 0:
                raise InputError(f"schedule {name}: must be > 0, got {getattr(self, name)!r}")

    def describe(self) -> str:
        """One line, e.g. ``50 epochs, batch 128, lr 1e-4 x0.5 every 10 epochs (MTFN-RR §4.1)``."""
        decay = (f" x{self.lr_decay:g} every {self.lr_decay_epochs} epochs" if self.lr_decay_epochs
                 else " (constant)")
        note = f"; {self.note}" if self.note else ""
        return (f"{self.epochs} epochs, batch {self.batch_size}, lr {short_number(self.lr)}{decay} "
                f"({self.source}{note})")


def short_number(value: Any) -> str:
    """``2e-4`` rather than ``0.0002`` for small rates; ``:g`` otherwise (help texts)."""
    if isinstance(value, float) and 0 < abs(value) < 1e-2:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class ResourceConfig:
    """How the work is placed on a Ray cluster: one actor per modality, GPUs or a CPU share each."""

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
    """MLflow settings (docs/metrics.md); the driver alone talks to MLflow."""

    tracking_uri: str | None = None  # None: sqlite:///<abs parent of the run>/mlflow.db
    experiment: str = "scalable_xmr"
    enabled: bool = True


@dataclass(frozen=True)
class ModalityOverrides:
    """Per-modality hyperparameters (e.g. the winners of a per-modality sweep)."""

    per_modality: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config_for(self, base: SDMLConfig, modality: str) -> SDMLConfig:
        """``base`` with this modality's overrides, ``lr`` resolved for it (:meth:`SDMLConfig.lr_for`)."""
        values = self.per_modality.get(modality, {})
        merged = {**base.to_dict(), **values}
        return from_dict(SDMLConfig, merged, source=f"config for modality {modality!r}").resolved(modality)
