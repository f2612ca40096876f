"""What a sweep is asked to do (:class:`SweepRequest`, the flags of ``jobs/sweep.py``) and the
checks made on it at the door, before Ray starts; :func:`backend_for` picks the model family's
backend (``--model``), whose metrics ``--metric`` must name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
from scalable_xmr.errors import InputError
from scalable_xmr.tuning.backend import Backend
from scalable_xmr.tuning.branch_backend import BranchBackend
from scalable_xmr.tuning.scheduler import SCHEDULERS
from scalable_xmr.tuning.sdml_backend import SDMLBackend
from scalable_xmr.tuning.space import MODELS


@dataclass(frozen=True)
class SweepRequest:
    """What to sweep, where, and how (the flags of ``jobs/sweep.py``)."""

    model: str
    dataset_uri: str
    storage: str = "sweeps"
    name: str | None = None  # None: <model>-<date>-<time> (or, with resume, the latest sweep)
    num_samples: int = 4  # samples per grid point (and per modality for SDML)
    max_concurrent: int | None = None  # None: as many as the cluster's resources allow
    scheduler: str = "asha"
    grids: tuple[str, ...] = ()  # "KEY=v1,v2"
    ranges: tuple[str, ...] = ()  # "KEY=lo:hi[:log]"
    epochs: int = 10
    metric: str | None = None  # None: the model's default (anchor_map / rsum)
    modalities: tuple[str, ...] | None = None  # SDML: a subset of the dataset's modalities
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    base: dict[str, Any] = field(default_factory=dict)  # fixed config values every trial shares
    tracking: TrackingConfig = TrackingConfig()
    resume: bool = False
    seed: int = 0
    max_failures: int = 2  # restarts of a failed trial (from its last checkpoint)
    verbose: int = 0  # Tune's console output: 0 silent, 1 status table, 2 every result (console.py)
    trial_lines: bool = True  # our line per finished trial on stderr (console.TrialLines)
    population: int = 1  # SDML: train up to this many configurations of a modality in one trial
    # SDML: W > 1 trains each trial's modality on W data-parallel Ray Train workers (Train inside
    # Tune, tuning/trial_workers.py); 1 keeps one trial actor per configuration
    workers_per_modality: int = 1
    gpus_per_worker: float | None = None  # 0 or 1; None: 1 when the cluster has GPUs (as xmr train)


def backend_for(model: str) -> Backend:
    """The sweep backend of ``--model``: SDML (per modality) or one branch model."""
    return SDMLBackend() if model == "sdml" else BranchBackend(model)


def check_request(req: SweepRequest) -> None:
    """The flags' values, each checked alone and against ``--model`` (before Ray starts)."""
    if req.model not in MODELS:
        raise InputError(f"--model must be one of {', '.join(MODELS)}, got {req.model!r}")
    if req.scheduler not in SCHEDULERS:
        raise InputError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {req.scheduler!r}")
    if not isinstance(req.epochs, int) or req.epochs < 1:
        raise InputError(f"--epochs must be an integer >= 1, got {req.epochs!r}")
    if req.max_concurrent is not None and req.max_concurrent < 1:
        raise InputError(f"--max-concurrent must be >= 1, got {req.max_concurrent}")
    if req.gpus_per_trial is not None and req.gpus_per_trial < 0:
        raise InputError(f"--gpus-per-trial must be >= 0, got {req.gpus_per_trial}")
    if req.cpus_per_trial <= 0:
        raise InputError(f"--cpus-per-trial must be > 0, got {req.cpus_per_trial}")
    if not isinstance(req.population, int) or req.population < 1:
        raise InputError(f"--population must be an integer >= 1, got {req.population!r}")
    if req.population > 1 and req.model != "sdml":
        raise InputError(f"--population applies to --model sdml only, not {req.model}")
    if req.modalities is not None and req.model != "sdml":
        raise InputError(f"--modality applies to --model sdml only, not {req.model}")
    check_workers_request(req)
    backend = backend_for(req.model)
    if req.metric is not None and req.metric not in backend.metrics:
        raise InputError(f"--metric for {req.model} must be one of {', '.join(backend.metrics)}, "
                         f"got {req.metric!r}")


def check_workers_request(req: SweepRequest) -> None:
    """``--workers-per-modality`` / ``--gpus-per-worker``: checked as ``xmr train`` checks them
    (:class:`ResourceConfig`), and against what a data-parallel trial cannot do."""
    ResourceConfig(workers_per_modality=req.workers_per_modality, gpus_per_worker=req.gpus_per_worker)
    w = req.workers_per_modality
    if w == 1:
        return
    if req.model != "sdml":
        raise InputError(f"--workers-per-modality applies to --model sdml only, not {req.model} (branch "
                         "models train on one worker)")
    if req.population > 1:
        raise InputError(f"--population {req.population} with --workers-per-modality {w}: a "
                         "data-parallel trial trains one configuration; drop --population or use "
                         "--workers-per-modality 1")
    if req.gpus_per_trial:
        raise InputError(f"--gpus-per-trial {req.gpus_per_trial:g} with --workers-per-modality {w}: "
                         "each worker takes --gpus-per-worker GPUs, the trial itself none; use "
                         "--gpus-per-worker")
    batch = req.base.get("batch_size", SDMLConfig.batch_size)
    if isinstance(batch, int) and w > batch:
        raise InputError(f"--workers-per-modality {w}: the batch size is {batch}, and each worker takes "
                         f"a slice of every batch; use at most {batch} workers or --set batch_size=N")


def check_base(req: SweepRequest, space) -> None:
    """--set values must not collide with what the sweep itself decides."""
    for key in ("epochs", "model"):
        if key in req.base:
            raise InputError(f"--set {key}: not settable here; use --{key}")
    batch = space.tuned().get("batch_size")
    if batch is not None and req.workers_per_modality > 1:
        smallest = min(batch.values) if batch.kind == "grid" else batch.low
        if smallest < req.workers_per_modality:
            raise InputError(f"--workers-per-modality {req.workers_per_modality}: the swept batch sizes go "
                             f"down to {smallest:g}, and each worker takes a slice of every batch; sweep "
                             f"batch sizes >= {req.workers_per_modality}")
    swept = sorted(set(req.base) & (set(space.tuned()) | set(space.in_trial())))
    if swept:
        raise InputError(f"--set {swept[0]}: {swept[0]} is swept; to fix it, give it one value with "
                         f"--grid {swept[0]}=VALUE")
