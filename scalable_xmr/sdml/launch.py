"""Placing modality trainers on a Ray cluster: parallel (SDML-3), serial (SDML-2), joint (SDML-1).

parallel  one actor per modality, all at once in one placement group (gang-scheduled)
serial    one actor at a time, each with the whole share of the cluster a modality may use
joint     one actor holding every modality network, trained in one loop (the baseline)

Each actor runs :func:`~scalable_xmr.sdml.trainer.train_modality` (or
:func:`~scalable_xmr.sdml.joint.train_joint`) through the same
:func:`~scalable_xmr.distributed.actors.run_actors` as the branch job's models.

With ``workers_per_modality`` W > 1 a modality is too big for one actor: it trains on W
data-parallel Ray Train workers (:func:`~scalable_xmr.sdml.data_parallel.train_modality_parallel`),
and the modalities go one after the other, each with the share of the cluster the flags give it
(parallel and serial are then the same; joint is refused in ``ResourceConfig``). One after the
other because such a modality is the one that needs the cluster, and each TorchTrainer pays its
start-up anyway (docs/architecture.md, "Data-parallel modalities"). W = 1 keeps the actors: a
TorchTrainer costs ~15-30 s of start-up a job against ~2-10 s for an actor.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Sequence

from scalable_xmr.config import IngestLimits, ResourceConfig
from scalable_xmr.distributed.actors import ActorResources, ActorTask, Outcome, run_tasks
from scalable_xmr.distributed.cluster import check_gpus, check_workers, cluster_cpus, has_gpus
from scalable_xmr.distributed.progress import ProgressBars
from scalable_xmr.sdml.joint import train_joint
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import train_modality

INGEST_CPUS = 1.0  # logical CPUs a streaming modality leaves Ray Data by default (RAY_NOTES.md)


def actor_resources(resources: ResourceConfig) -> ActorResources:
    return ActorResources(gpus=resources.gpus_per_modality, cpus=resources.cpus_per_modality,
                          max_restarts=resources.max_restarts,
                          placement_timeout_s=resources.placement_timeout_s)


def check_resources(resources: ResourceConfig) -> None:
    """Fail fast when GPUs are asked of a cluster that has none and cannot get any, or when a
    modality's data-parallel workers can never be placed."""
    check_gpus(resources.gpus_per_modality, "--gpus-per-modality")
    check_workers(resources.workers_per_modality, worker_gpus(resources), resources.cpus_per_modality)


def worker_gpus(resources: ResourceConfig) -> float:
    """GPUs of each data-parallel worker: ``--gpus-per-worker``, else 1 when the cluster has GPUs."""
    if resources.gpus_per_worker is not None:
        return float(resources.gpus_per_worker)
    return 1.0 if has_gpus() else 0.0


def worker_resources(resources: ResourceConfig) -> dict[str, float]:
    """What each of a modality's W workers asks of Ray: the modality's CPUs (``--cpus-per-modality``;
    default: 1 a worker beside a GPU, else the whole cluster's, less :data:`INGEST_CPUS` when it
    streams) shared by its workers, and its GPU."""
    w, gpus = resources.workers_per_modality, worker_gpus(resources)
    cpus = resources.cpus_per_modality
    if cpus is None:
        cpus = float(w) if gpus > 0 else cluster_cpus() - (INGEST_CPUS if resources.stream else 0.0)
    return {"CPU": max(math.floor(100 * cpus / w) / 100, 0.01), **({"GPU": gpus} if gpus > 0 else {})}


def ingest_limits(resources: ResourceConfig) -> IngestLimits:
    """Ray Data's share while a modality streams: the cluster's CPUs the workers leave (at least
    :data:`INGEST_CPUS`), and IngestLimits' object-store and shuffle-buffer budgets."""
    left = cluster_cpus() - resources.workers_per_modality * worker_resources(resources)["CPU"]
    return IngestLimits(cpus=max(INGEST_CPUS, left))


def workers_line(jobs: Sequence[ModalitySpec], resources: ResourceConfig) -> str:
    """The start line of a data-parallel job, e.g. ``workers: image 2, text 2 (DDP, gloo; ...)``."""
    backend = "nccl" if worker_gpus(resources) > 0 else "gloo"
    per = ", ".join(f"{j.modality} {resources.workers_per_modality}" for j in jobs)
    each = ", ".join(f"{v:g} {k}" for k, v in worker_resources(resources).items())
    streamed = f"; streamed by Ray Data, {ingest_limits(resources).cpus:g} CPU" if resources.stream else ""
    if resources.workers_per_modality == 1:  # a W = 1 stream: the modality's actor, no DDP
        return f"workers: {per} (the modality's actor; {each}{streamed}; one modality after the other)"
    return f"workers: {per} (DDP, {backend}; {each} each{streamed}; one modality after the other)"


def train_modalities(
    jobs: Sequence[ModalitySpec], resources: ResourceConfig, show_progress: bool = True
) -> Outcome:
    """Train every job on the cluster with the chosen strategy: results by modality, and the
    modality that failed (serial: the groups before it stay finished; joint: none singled out)."""
    if not jobs:
        return Outcome()
    check_resources(resources)
    if resources.workers_per_modality > 1:
        return train_data_parallel(jobs, resources)
    if resources.stream:
        return train_streamed_in_actors(jobs, resources, show_progress)
    placement = actor_resources(resources)
    bars = ProgressBars([j.modality for j in jobs], enabled=show_progress, stream=sys.stderr)
    try:
        if resources.strategy == "joint":
            joint = run_tasks([ActorTask("joint", train_joint, list(jobs))], placement, bars=bars)
            return Outcome(joint.results.get("joint", {}), None, joint.error)
        groups = [list(jobs)] if resources.strategy == "parallel" else [[j] for j in jobs]
        outcome = Outcome()
        for group in groups:  # serial: one at a time, each with the share all would have had
            tasks = [ActorTask(j.modality, train_modality, j) for j in group]
            outcome = outcome.then(run_tasks(tasks, placement, bars=bars))
            if outcome.error is not None:
                break
        return outcome
    finally:
        bars.close()


def train_streamed_in_actors(jobs: Sequence[ModalitySpec], resources: ResourceConfig,
                             show_progress: bool = True) -> Outcome:
    """W = 1 streams: each modality in its own actor (no Ray Train), one after the other, the
    driver's moments pass first (sdml/streaming.py ``train_stream_in_actor``); the actor gets the
    CPUs Ray Data's tasks leave it, as a streaming worker does."""
    from scalable_xmr.sdml.streaming import stream_inputs, train_stream_in_actor  # loads Ray Data: only here

    print(workers_line(jobs, resources), file=sys.stderr, flush=True)
    limits = ingest_limits(resources)
    cpus = worker_resources(resources)["CPU"]
    placement = dataclasses.replace(actor_resources(resources), cpus=cpus)
    bars = ProgressBars([j.modality for j in jobs], enabled=show_progress, stream=sys.stderr)
    outcome = Outcome()
    try:
        for job in jobs:
            job = dataclasses.replace(job, num_threads=job.num_threads or max(1, int(cpus)))
            try:
                ingest = stream_inputs(job, limits)
            except BaseException as e:  # the lifecycle records it (Ctrl-C included) and raises it
                return Outcome(outcome.results, job.modality, e)
            task = ActorTask(job.modality, train_stream_in_actor, (job, ingest, limits))
            outcome = outcome.then(run_tasks([task], placement, bars=bars))
            if outcome.error is not None:
                break
        return outcome
    finally:
        bars.close()


def train_data_parallel(jobs: Sequence[ModalitySpec], resources: ResourceConfig) -> Outcome:
    """Each job on ``workers_per_modality`` Ray Train workers, one modality after the other; the
    Outcome of those that finished and the one that failed (or was interrupted) with its error."""
    from scalable_xmr.sdml.data_parallel import train_modality_parallel  # loads Ray Train: only here
    from scalable_xmr.sdml.streaming import train_modality_streaming  # and Ray Data

    print(workers_line(jobs, resources), file=sys.stderr, flush=True)
    per_worker = worker_resources(resources)
    train = train_modality_parallel
    if resources.stream:
        train = functools.partial(train_modality_streaming, limits=ingest_limits(resources))
    outcome = Outcome()
    for job in jobs:
        try:
            outcome.results[job.modality] = train(
                job, resources.workers_per_modality, use_gpu="GPU" in per_worker,
                resources_per_worker=per_worker, max_failures=resources.max_restarts)
        except BaseException as e:  # the lifecycle records it (Ctrl-C included) and raises it
            return Outcome(outcome.results, job.modality, e)
        print(f"{job.modality}: trained on {resources.workers_per_modality} workers", file=sys.stderr,
              flush=True)
    return outcome
