"""Placing modality trainers on a Ray cluster: parallel (SDML-3), serial (SDML-2), joint (SDML-1).

parallel  one actor per modality in one placement group (gang-scheduled), all at once
serial    one actor at a time, each with the whole share of the cluster a modality may use
joint     one actor holding every modality network, trained in one loop (the baseline)

GPUs: ``gpus_per_modality`` GPUs per actor (fractional packs small modalities on one card). On a CPU
cluster the CPUs are shared out: each actor gets ``cpus_per_modality`` (default: all CPUs divided
evenly, fractions allowed) and as many torch threads as whole CPUs in its share (at least one).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from scalable_xmr.config import ResourceConfig
from scalable_xmr.distributed.actors import ProgressHub, joint_actor, modality_actor, wait_with_progress
from scalable_xmr.distributed.progress import ProgressBars
from scalable_xmr.errors import InputError, XMRError
from scalable_xmr.sdml.trainer import ModalityJob, TrainResult

_STARTED_LOCAL = False


def _on_cluster_head() -> bool:
    """True under `ray submit` / `ray job submit` (RAY_ADDRESS is set, or this is a head node made by
    the cluster launcher). A Ray started by another process's ``ray.init()`` on this machine (another
    job, a test) is deliberately NOT attached to: it dies with its owner."""
    return bool(os.environ.get("RAY_ADDRESS")) or os.path.isfile(
        os.path.expanduser("~/ray_bootstrap_config.yaml")
    )


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Attach to a Ray cluster, or start a local one; returns a description.

    ``address=None``: attach to the cluster when running under ``ray submit`` (or with RAY_ADDRESS
    set), else start a private local Ray. ``"auto"`` attaches to a cluster started on this machine
    with ``ray start``; ``"local"`` always starts one; anything else is a cluster address.
    """
    global _STARTED_LOCAL
    if ray.is_initialized():
        return "attached to the Ray runtime already initialised in this process"
    quiet = {"log_to_driver": True, "logging_level": "WARNING"}
    if address is None and _on_cluster_head():
        address = "auto"
    if address not in (None, "local"):
        ray.init(address=address, **quiet)
        return f"attached to Ray cluster at {address}"
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    _STARTED_LOCAL = True
    return f"started a local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def describe_cluster() -> str:
    res = ray.cluster_resources()
    parts = [f"{res.get(k, 0):g} {k}" for k in ("CPU", "GPU")]
    return ", ".join(parts) + f", {len(ray.nodes())} node(s)"


def unwrap_actor_error(error: Exception) -> Exception:
    """The user-facing error inside a Ray task error, when there is one."""
    cause = getattr(error, "cause", None)
    if isinstance(error, RayTaskError) and isinstance(cause, XMRError | ValueError | FileNotFoundError):
        return cause
    return error


def get_results(names: list[str], refs: list) -> dict[str, Any]:
    """``ray.get`` each actor's result by name; an actor's user-facing error is raised as itself."""
    results = {}
    for name, ref in zip(names, refs, strict=True):
        try:
            results[name] = ray.get(ref)
        except (RayTaskError, RayActorError) as e:
            raise unwrap_actor_error(e) from None
    return results


def _cpu_share(resources: ResourceConfig, n_actors: int) -> float:
    if resources.cpus_per_modality is not None:
        return resources.cpus_per_modality
    total = ray.cluster_resources().get("CPU", 1.0)
    if resources.gpus_per_modality > 0:
        return 1.0
    # Leave the driver a sliver so actors never starve it; floor at 1/100 CPU.
    return max(math.floor(100 * total / n_actors) / 100, 0.01)


def _can_autoscale() -> bool:
    """True on a cluster-launcher head node, whose autoscaler may still bring up GPU workers."""
    return not _STARTED_LOCAL and os.path.isfile(os.path.expanduser("~/ray_bootstrap_config.yaml"))


def check_resources(resources: ResourceConfig) -> None:
    """Fail fast when GPUs are asked of a cluster that has none and cannot get any."""
    no_gpus = ray.cluster_resources().get("GPU", 0) == 0
    if resources.gpus_per_modality > 0 and no_gpus and not _can_autoscale():
        raise InputError(
            f"--gpus-per-modality {resources.gpus_per_modality:g} but this Ray cluster has no GPUs "
            f"({describe_cluster()}); use 0 to train on CPUs"
        )


def _bundles(resources: ResourceConfig, n: int, cpus: float) -> list[dict[str, float]]:
    bundle = {"CPU": cpus}
    if resources.gpus_per_modality > 0:
        bundle["GPU"] = resources.gpus_per_modality
    return [dict(bundle) for _ in range(n)]


def wait_for_placement(pg, resources: ResourceConfig) -> None:
    """Wait for the placement group's bundles; on timeout remove it and say what the cluster has."""
    timeout = resources.placement_timeout_s if _can_autoscale() else 60.0
    try:
        ray.get(pg.ready(), timeout=timeout)
    except GetTimeoutError as e:
        remove_placement_group(pg)
        raise InputError(
            f"could not place {len(pg.bundle_specs)} modality actor(s) of {pg.bundle_specs[0]} within "
            f"{timeout:g}s; the cluster has {describe_cluster()}"
        ) from e


def _actor_options(resources: ResourceConfig, cpus: float, pg, index: int) -> dict:
    return {
        "num_cpus": cpus,
        "num_gpus": resources.gpus_per_modality,
        "max_restarts": resources.max_restarts,
        "max_task_retries": resources.max_restarts,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
    }


def train_modalities(
    jobs: Sequence[ModalityJob], resources: ResourceConfig, show_progress: bool = True
) -> dict[str, TrainResult]:
    """Train every job on the cluster with the chosen strategy; returns results by modality."""
    if not jobs:
        return {}
    check_resources(resources)
    hub_name = f"xmr-progress-{uuid.uuid4().hex[:12]}"
    hub = ProgressHub.options(name=hub_name).remote()
    bars = ProgressBars([j.modality for j in jobs], enabled=show_progress, stream=sys.stderr)
    try:
        if resources.strategy == "parallel":
            return _run_groups([list(jobs)], resources, hub, hub_name, bars)
        if resources.strategy == "serial":
            return _run_groups([[j] for j in jobs], resources, hub, hub_name, bars)
        return _run_joint(list(jobs), resources, hub, hub_name, bars)
    finally:
        bars.close()
        ray.kill(hub)


def _run_groups(groups, resources, hub, hub_name, bars) -> dict[str, TrainResult]:
    results: dict[str, TrainResult] = {}
    for group in groups:
        # Serial runs one modality at a time; it may use the share all modalities would have had.
        cpus = _cpu_share(resources, len(group))
        threads = max(1, int(cpus))
        pg = placement_group(_bundles(resources, len(group), cpus), strategy="PACK")
        wait_for_placement(pg, resources)
        try:
            actors = [
                modality_actor(**_actor_options(resources, cpus, pg, i)).remote(
                    dataclasses.replace(job, num_threads=job.num_threads or threads), hub_name
                )
                for i, job in enumerate(group)
            ]
            refs = [a.train.remote() for a in actors]
            wait_with_progress(refs, hub, bars)
            results.update(get_results([job.modality for job in group], refs))
            for a in actors:
                ray.kill(a)
        finally:
            remove_placement_group(pg)
    return results


def _run_joint(jobs, resources, hub, hub_name, bars) -> dict[str, TrainResult]:
    cpus = _cpu_share(resources, 1)
    pg = placement_group(_bundles(resources, 1, cpus), strategy="PACK")
    wait_for_placement(pg, resources)
    try:
        threads = max(1, int(cpus))
        jobs = [dataclasses.replace(j, num_threads=j.num_threads or threads) for j in jobs]
        actor = joint_actor(**_actor_options(resources, cpus, pg, 0)).remote(jobs, hub_name)
        ref = actor.train.remote()
        wait_with_progress([ref], hub, bars)
        return get_results(["joint"], [ref])["joint"]
    finally:
        remove_placement_group(pg)
