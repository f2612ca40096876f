"""How a sweep with ``--workers-per-modality W > 1`` sits on the cluster, decided on the driver.

Each such trial runs its modality's data-parallel training (sdml/data_parallel.py) as one Ray Train
``TorchTrainer`` inside the Tune trial function, the way Ray 2.60 documents Train inside Tune
(docs.ray.io, "Hyperparameter Tuning with Ray Tune", Train V2): the Tune trial only starts its
TorchTrainer and waits, so it asks :data:`DRIVER_CPUS`; its W workers ask their own resources when
Train places them, in a placement group of Train's own, outside Tune's accounting. Tune would
therefore start as many trials as it has CPUs for their drivers, and the extra trials' Train runs
would wait for workers: the sweep sets ``max_concurrent_trials`` to the number of whole trials
(driver and W workers) the cluster holds, :func:`trials_that_fit`.

Each worker asks ``--cpus-per-trial`` CPUs (what one single-worker trial trains with) and
``--gpus-per-worker`` GPUs (default as ``xmr train``: 1 when the cluster has GPUs, else 0).

A trial that Tune stops (ASHA, at a rung or at its last epoch) ends with its actor, which owns the
Train controller and so its workers -- but not their placement group: Ray scopes it to the job
(the sweep's driver), and Train V2's own cleaner finds a dead controller only through the State
API, which a Ray without its dashboard has not. Seen here: a sweep whose finished trials had kept
their groups could not place the next trial's workers. So each trial reports its group
(:data:`PLACEMENT_GROUP_KEY`, from rank 0) and :class:`ReleaseTrainGroups`, on the driver, removes
it once Tune has ended the trial (a Train run that ended on its own removed it already).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import ray
from ray import tune
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from scalable_xmr.config import ResourceConfig
from scalable_xmr.distributed.cluster import can_autoscale, describe_cluster
from scalable_xmr.errors import InputError
from scalable_xmr.sdml.launch import worker_gpus

PLACEMENT_GROUP_KEY = "train_placement_group"  # a trial's result: its Train workers' group (hex id)

# The Tune trial of a data-parallel sweep is the driver of its TorchTrainer: it starts it and waits
# (Ray's guide: "the Tune trial is actually not doing extensive computation inside this actor").
DRIVER_CPUS = 0.25


@dataclass(frozen=True)
class TrialWorkers:
    """Where a data-parallel sweep's trials go (kept in sweep.json as ``trial_workers``)."""

    workers: int  # W: data-parallel workers of each trial
    per_worker: dict[str, float]  # Ray resources of each worker, e.g. {"CPU": 1.0, "GPU": 1.0}
    driver_cpus: float  # the Tune trial's own CPUs
    fit: int  # whole trials the cluster holds at once
    concurrent: int  # trials at once: ``fit`` (at least 1), capped by --max-concurrent

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrialWorkers:
        return cls(**values)

    @property
    def per_trial(self) -> dict[str, float]:
        """What one trial takes: W workers and its driver."""
        need = {k: self.workers * v for k, v in self.per_worker.items()}
        need["CPU"] = need.get("CPU", 0.0) + self.driver_cpus
        return need


def trials_that_fit(total: dict[str, float], per_trial: dict[str, float]) -> int:
    """How many trials each taking ``per_trial`` fit in ``total`` at once: the whole number of
    trials the scarcest resource holds (0 when not even one fits).

    >>> trials_that_fit({"CPU": 64.0, "GPU": 8.0}, {"CPU": 4.25, "GPU": 4.0})
    2
    >>> trials_that_fit({"CPU": 2.0, "GPU": 0.0}, {"CPU": 1.25})
    1
    """
    # the small epsilon: 0.75 + 0.25 is one CPU, not one CPU less a rounding error
    return min(math.floor(total.get(k, 0.0) / v + 1e-9) for k, v in per_trial.items() if v > 0)


def plan_trial_workers(workers: int, cpus_per_trial: float, gpus_per_worker: float,
                       max_concurrent: int | None, total: dict[str, float], described: str,
                       autoscale: bool = False) -> TrialWorkers:
    """The sweep's :class:`TrialWorkers` on a cluster of ``total`` resources (``described`` in
    words); one line when not even one trial fits (unless the cluster can ``autoscale``)."""
    per_worker = {"CPU": float(cpus_per_trial)}
    if gpus_per_worker:
        per_worker["GPU"] = float(gpus_per_worker)
    plan = TrialWorkers(workers, per_worker, DRIVER_CPUS, 0, 0)
    fit = trials_that_fit({k: float(v) for k, v in total.items()}, plan.per_trial)
    if fit == 0 and not autoscale:
        need = plan.per_trial
        if need.get("GPU", 0.0) > total.get("GPU", 0.0):
            raise InputError(f"--workers-per-modality {workers} with --gpus-per-worker {gpus_per_worker:g} "
                             f"needs {need['GPU']:g} GPUs a trial; this cluster has {described}: lower "
                             "--workers-per-modality or pass --gpus-per-worker 0 to train on CPUs")
        raise InputError(f"--workers-per-modality {workers}: a trial needs {need['CPU']:g} CPUs ({workers} "
                         f"workers x --cpus-per-trial {cpus_per_trial:g} + {DRIVER_CPUS:g} for the trial "
                         f"itself); this cluster has {described}: lower --cpus-per-trial or "
                         "--workers-per-modality")
    concurrent = max(1, fit)
    if max_concurrent is not None:
        concurrent = min(concurrent, max_concurrent)
    return TrialWorkers(workers, per_worker, DRIVER_CPUS, fit, concurrent)


def workers_line(plan: TrialWorkers, modalities: list[str], described: str) -> str:
    """The start line of a data-parallel sweep, e.g.

    >>> plan = TrialWorkers(2, {"CPU": 0.5}, 0.25, 1, 1)
    >>> line = workers_line(plan, ["audio", "text"], "2 CPU, 0 GPU, 1 node(s)")
    >>> print(line)  # doctest: +NORMALIZE_WHITESPACE
    workers: audio 2, text 2 per trial (Ray Train in each Tune trial; DDP, gloo; 0.5 CPU each,
    0.25 CPU for the trial itself): 1 trial at a time on 2 CPU, 0 GPU, 1 node(s)
    """
    backend = "nccl" if plan.per_worker.get("GPU", 0) > 0 else "gloo"
    per = ", ".join(f"{m} {plan.workers}" for m in modalities)
    each = ", ".join(f"{v:g} {k}" for k, v in plan.per_worker.items())
    at_once = f"{plan.concurrent} trial{'s' if plan.concurrent != 1 else ''} at a time"
    if plan.concurrent < max(plan.fit, 1):
        at_once += f" (--max-concurrent; {plan.fit} would fit)"
    return (f"workers: {per} per trial (Ray Train in each Tune trial; DDP, {backend}; {each} each, "
            f"{plan.driver_cpus:g} CPU for the trial itself): {at_once} on {described}")


def cluster_trial_workers(req: Any) -> TrialWorkers | None:
    """The plan of sweep request ``req`` on the connected Ray cluster (None when W = 1); GPUs per
    worker resolved as ``xmr train`` resolves them (sdml/launch.py)."""
    if req.workers_per_modality == 1:
        return None
    gpus = worker_gpus(ResourceConfig(workers_per_modality=req.workers_per_modality,
                                      gpus_per_worker=req.gpus_per_worker))
    return plan_trial_workers(req.workers_per_modality, req.cpus_per_trial, gpus, req.max_concurrent,
                              ray.cluster_resources(), describe_cluster(), can_autoscale())


def release_placement_group(group_id: str) -> bool:
    """Remove the placement group ``group_id`` (hex) unless it is gone already; True if removed."""
    group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
    if placement_group_table(group).get("state", "REMOVED") == "REMOVED":
        return False
    remove_placement_group(group)
    return True


class ReleaseTrainGroups(tune.Callback):
    """Tune callback (driver): once a data-parallel trial has ended, its Train workers' placement
    group goes, so the next trials can be placed (see the module's docstring)."""

    def _release(self, trial) -> None:
        group_id = (trial.last_result or {}).get(PLACEMENT_GROUP_KEY)
        if group_id:
            release_placement_group(group_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._release(trial)
