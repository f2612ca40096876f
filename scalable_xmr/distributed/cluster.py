"""Attaching to a Ray cluster and asking what it has (the only place a job meets ``ray.init``).

``connect`` attaches under ``ray submit`` / ``ray job submit`` (or with RAY_ADDRESS set), or with an
explicit address, and otherwise starts a private local Ray; it never attaches to a Ray that another
process on this machine started for itself.
"""

from __future__ import annotations

import os

import ray

from scalable_xmr.distributed.signals import SETUP_HOOK
from scalable_xmr.errors import InputError

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
    # Workers ignore Ctrl-C: the driver alone handles it (distributed/signals.py).
    quiet = {"log_to_driver": True, "logging_level": "WARNING",
             "runtime_env": {"worker_process_setup_hook": SETUP_HOOK}}
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


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def has_gpus() -> bool:
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1


def largest_node() -> dict[str, float]:
    """The CPU and GPU count of the biggest alive node (what one actor can be given at most)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}


def can_autoscale() -> bool:
    """True on a cluster-launcher head node, whose autoscaler may still bring up GPU workers."""
    return not _STARTED_LOCAL and os.path.isfile(os.path.expanduser("~/ray_bootstrap_config.yaml"))


def check_gpus(gpus_per_actor: float, flag: str) -> None:
    """Fail fast when GPUs are asked of a cluster that has none and cannot get any (``flag`` names
    the option the user set, e.g. ``--gpus-per-modality``)."""
    no_gpus = ray.cluster_resources().get("GPU", 0) == 0
    if gpus_per_actor > 0 and no_gpus and not can_autoscale():
        raise InputError(
            f"{flag} {gpus_per_actor:g} but this Ray cluster has no GPUs ({describe_cluster()}); "
            "use 0 to train on CPUs"
        )
