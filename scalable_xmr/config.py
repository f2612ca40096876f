"""Typed, frozen configs built once at the boundary (CLI, JSON, Tune dicts).

``from_dict`` refuses unknown keys (a misspelt key must never be silently ignored) and checks every
value's domain with a message that names the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
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


def reference_lr(modality: str) -> tuple[float, str]:
    """The reference code's Adam rate of ``modality`` and why (the job's lr line prints it)."""
    if modality == "image":
        return SDML_IMAGE_LR, "reference code: image rate"
    return SDML_OTHER_LR, "reference code: non-image rate"


@dataclass(frozen=True)
class SDMLConfig:
    """Hyperparameters of one modality's supervised autoencoder (docs/models.md, SDML §4.2).

    ``lr=None`` picks the reference code's per-modality rate (:meth:`lr_for`): 1e-4 for the
    modality named "image", 2e-4 for every other one. The jobs resolve it per modality
    (:meth:`ModalityOverrides.config_for`, which also applies ``--lr NAME=RATE`` and best.json), so
    run.json and MLflow record the rate actually used.
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
    # Early stopping (off by default: the paper trains every epoch): stop once the validation label
    # loss, the selection criterion, has not improved for this many epochs (patience_exhausted).
    patience: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise InputError(f"lam must be in [0, 1], got {self.lam}")
        for name in ("dim", "hidden", "batch_size", "epochs", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        check_patience(self.patience)

    def lr_for(self, modality: str) -> float:
        """The Adam rate of ``modality``: ``lr`` when set, else the reference code's rule."""
        if not isinstance(modality, str):  # the rule is by name (it once took the input dim)
            raise TypeError(f"lr_for takes a modality name, got {modality!r}")
        return self.lr if self.lr is not None else reference_lr(modality)[0]

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


def check_patience(value: Any, where: str = "patience") -> int | None:
    """``value`` as an early-stopping patience: None (off) or a whole number of epochs >= 1."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{where} must be a whole number of epochs >= 1 (epochs without a better "
                         f"validation score before training stops), got {value!r}")
    return value


def patience_exhausted(epoch: int, best_epoch: int, patience: int | None) -> bool:
    """The early-stopping rule of every trainer (SDML modalities, branch members and stages,
    population slots): after ``epoch`` (1-based), stop when the selected epoch ``best_epoch``
    lies ``patience`` or more epochs back, i.e. ``patience`` epochs in a row brought no better
    validation score. Both numbers are in every checkpoint's history, so the count survives a
    resume. ``patience`` None: never.

    Example:
        >>> [patience_exhausted(e, 1, 2) for e in (1, 2, 3)]  # best at 1; 2, 3 no better
        [False, False, True]
    """
    return patience is not None and epoch - best_epoch >= patience


def patience_stop(scores: Sequence[float], patience: int, higher_is_better: bool) -> int | None:
    """The epoch (1-based) at which :func:`patience_exhausted` stops a training whose validation
    scores per epoch were ``scores`` (a strictly better score is an improvement, a tie keeps the
    earlier epoch, as the trainers select); None when it would run to the end.

    Example:
        >>> patience_stop([3.0, 2.0, 2.5, 2.0, 1.9, 2.2, 2.3], 2, higher_is_better=False)
        4
        >>> print(patience_stop([3.0, 2.0, 2.5, 2.0, 1.9, 2.2, 2.3], 3, higher_is_better=False))
        None
    """
    best, best_epoch = None, 0
    for epoch, score in enumerate(scores, 1):
        if best is None or (score > best if higher_is_better else score < best):
            best, best_epoch = score, epoch
        if epoch < len(scores) and patience_exhausted(epoch, best_epoch, patience):
            return epoch
    return None


def early_stop_note(name: str, epochs: int, best_epoch: int, scores: Sequence[float],
                    higher_is_better: bool, patience: int | None = None,
                    stopped_at: int | None = None) -> str | None:
    """The line a job's footer prints about one modality or member's epochs, or None.

    With ``patience``: where it stopped, or that it ran every epoch. Without: a hint when the
    selected epoch lies in the first tenth of ``epochs`` -- patience of a tenth of the epochs
    (at least 1) would have stopped it early (``scores``: the validation score of each epoch).

    Example:
        >>> early_stop_note("image", 200, 1, [1.0] * 200, higher_is_better=False)
        'image: best epoch 1 of 200; --patience 20 would have stopped at epoch 21'
        >>> early_stop_note("image", 200, 11, [], False, patience=20, stopped_at=31)
        'image: stopped early at epoch 31 of 200 (best epoch 11, --patience 20)'
    """
    if patience is not None:
        if stopped_at is None:
            return f"{name}: ran all {epochs} epochs (best epoch {best_epoch}, --patience {patience})"
        return f"{name}: stopped early at epoch {stopped_at} of {epochs} (best epoch {best_epoch}, " \
               f"--patience {patience})"
    if best_epoch < 1 or best_epoch * 10 > epochs or len(scores) < epochs:
        return None
    suggested = max(1, epochs // 10)
    stop = patience_stop(scores, suggested, higher_is_better)
    if stop is None:
        return None
    return (f"{name}: best epoch {best_epoch} of {epochs}; --patience {suggested} would have stopped at "
            f"epoch {stop}")


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
    # W > 1: each modality on W data-parallel Ray Train workers (sdml/data_parallel.py), the
    # modalities one after the other; 1: one actor per modality (Train's start-up is not worth it)
    workers_per_modality: int = 1
    gpus_per_worker: float | None = None  # 0 or 1 (one device a DDP rank); None: 1 if the cluster has GPUs
    # Each modality's table streamed by Ray Data to its W Ray Train workers (sdml/streaming.py)
    # instead of held whole by each: for a table bigger than a worker's memory. W = 1 too.
    stream: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        w = self.workers_per_modality
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise InputError(f"--workers-per-modality must be a whole number >= 1, got {w!r}")
        if w > 1 and self.strategy == "joint":
            raise InputError(f"--workers-per-modality {w} with --strategy joint: the joint strategy trains "
                             "every modality in one process; use --strategy parallel or serial")
        if self.stream and self.strategy == "joint":
            raise InputError("--stream with --strategy joint: the joint strategy holds every modality in "
                             "one process; use --strategy parallel or serial")
        if self.gpus_per_worker not in (None, 0, 1):
            raise InputError(f"--gpus-per-worker must be 0 or 1 (a data-parallel worker uses one device), "
                             f"got {self.gpus_per_worker!r}")
        if self.gpus_per_modality < 0:
            raise InputError(f"gpus-per-modality must be >= 0, got {self.gpus_per_modality}")
        if self.cpus_per_modality is not None and self.cpus_per_modality <= 0:
            raise InputError(f"cpus-per-modality must be > 0, got {self.cpus_per_modality}")
        if self.max_restarts < 0:
            raise InputError(f"max-restarts must be >= 0, got {self.max_restarts}")


@dataclass(frozen=True)
class IngestLimits:
    """What Ray Data may use while a modality streams, beside its workers' own resources
    (distributed/ray_data.py): ingest and the workers cannot starve each other on a small node."""

    cpus: float = 1.0  # logical CPUs for read/convert tasks at once (not the workers')
    object_store_bytes: int = 256 << 20  # blocks in flight in the object store
    shuffle_buffer_bytes: int = 64 << 20  # each worker's local shuffle buffer (rows x dim x 4 B)
    # A read/convert task's CPU: half, so two tasks share ``cpus`` (decoding is far faster than
    # training reads; each task in flight is one more Ray worker process, ~0.2 GB, in the job)
    task_cpus: float = 0.5
    progress: bool = False  # Ray Data's progress bars (each worker's, on the driver's console)

    def __post_init__(self) -> None:
        if min(self.cpus, self.task_cpus, self.object_store_bytes) <= 0 or self.shuffle_buffer_bytes < 0:
            raise InputError(f"ingest limits must be positive, got {self}")

    def shuffle_rows(self, dim: int, batch_rows: int) -> int:
        """Rows of a worker's local shuffle buffer: its byte budget, at least one batch."""
        return max(batch_rows, self.shuffle_buffer_bytes // (4 * max(dim, 1)))


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings (docs/metrics.md); the driver alone talks to MLflow."""

    tracking_uri: str | None = None  # None: sqlite:///<abs parent of the run>/mlflow.db
    experiment: str = "scalable_xmr"
    enabled: bool = True


@dataclass(frozen=True)
class LearningRates:
    """The ``--lr`` flags: one Adam rate for every modality and/or rates for named modalities.

    A named rate beats the rate for every modality (``--lr 1e-4 --lr image=2e-4``: image 2e-4, the
    rest 1e-4); both beat best.json (:meth:`ModalityOverrides.lr_choice` has the whole order).
    """

    every: float | None = None  # --lr RATE
    named: tuple[tuple[str, float], ...] = ()  # --lr NAME=RATE, in the order given (frozen)

    @classmethod
    def parse(cls, values: Sequence[str] | None, flag: str = "--lr") -> LearningRates:
        """The repeated ``--lr`` values; each is RATE (every modality, at most one) or NAME=RATE.

        Example:
            >>> LearningRates.parse(["1e-4", "image=2e-4"])
            LearningRates(every=0.0001, named=(('image', 0.0002),))
        """
        every, named = None, {}
        for value in values or ():
            name, sep, text = value.partition("=")
            if sep and not (name.strip() and text.strip()):  # names are checked against the data later
                raise InputError(f"{flag} {value!r}: a modality's own rate is NAME=RATE, e.g. image=1e-4")
            rate = _rate(text if sep else value, f"{flag} {value!r}")
            if not sep:
                if every is not None:
                    raise InputError(f"{flag} gives two rates for every modality ({short_number(every)} and "
                                     f"{short_number(rate)}): give one, and NAME=RATE for a modality's own")
                every = rate
            elif name in named:
                raise InputError(f"{flag} names modality {name!r} twice")
            else:
                named[name] = rate
        return cls(every, tuple(named.items()))

    def check_modalities(self, trained: Sequence[str], dataset: str | None = None,
                         known: Sequence[str] = ()) -> None:
        """Every named modality is one the job trains (and, given ``dataset``, one of its ``known``)."""
        for name, _ in self.named:
            if name in trained:
                continue
            if dataset is not None and name not in known:
                raise InputError(f"--lr names modality {name!r}, which is not in dataset {dataset} "
                                 f"(it has: {', '.join(known)})")
            raise InputError(f"--lr names modality {name!r}, which this job does not train "
                             f"(--modality: {', '.join(trained)})")


def _rate(text: str, where: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number (give RATE or NAME=RATE, e.g. 1e-4 or "
                         "image=1e-4)") from None
    if not (math.isfinite(rate) and rate > 0):
        raise InputError(f"{where}: a learning rate must be a positive number, got {text}")
    return rate


@dataclass(frozen=True)
class ModalityOverrides:
    """Per-modality hyperparameters (e.g. the winners of a per-modality sweep) and the ``--lr`` flags."""

    per_modality: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr: LearningRates = LearningRates()  # the command line's rates: they beat per_modality's "lr"
    source: str = "best.json"  # where per_modality comes from, as the job's lr line names it

    def config_for(self, base: SDMLConfig, modality: str) -> SDMLConfig:
        """``base`` with this modality's overrides, ``lr`` resolved for it (:meth:`lr_choice`)."""
        cfg = self._merged(base, modality)
        return dataclasses.replace(cfg, lr=self.lr_choice(base, modality)[0])

    def lr_choice(self, base: SDMLConfig, modality: str) -> tuple[float, str]:
        """``modality``'s Adam rate and where it comes from. First that applies: ``--lr NAME=RATE``,
        ``--lr RATE``, ``per_modality`` (best.json), ``base.lr`` (the run's), the reference code."""
        named = dict(self.lr.named)
        if modality in named:
            return named[modality], f"--lr {modality}="
        if self.lr.every is not None:
            return self.lr.every, "--lr"
        cfg = self._merged(base, modality)  # best.json's rate, checked like every other value
        if self.per_modality.get(modality, {}).get("lr") is not None:
            return cfg.lr, self.source
        if base.lr is not None:
            return base.lr, "the run's lr"
        return reference_lr(modality)

    def lr_line(self, base: SDMLConfig, modalities: Sequence[str]) -> str:
        """What the jobs print before training, e.g. ``lr: image 1e-4 (reference code: image rate);
        text, audio 2e-4 (reference code: non-image rate)``: modalities of one rate and reason together."""
        groups: dict[tuple[float, str], list[str]] = {}
        for m in modalities:
            groups.setdefault(self.lr_choice(base, m), []).append(m)
        return "lr: " + "; ".join(f"{', '.join(ms)} {short_number(rate)} ({why})"
                                  for (rate, why), ms in groups.items())

    def _merged(self, base: SDMLConfig, modality: str) -> SDMLConfig:
        values = self.per_modality.get(modality, {})
        return from_dict(SDMLConfig, {**base.to_dict(), **values}, source=f"config for modality {modality!r}")
