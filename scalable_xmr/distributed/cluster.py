"""Attaching to a Ray cluster and asking what it has (the only place a job meets ``ray.init``).

``connect`` attaches under ``ray submit`` / ``ray job submit`` (or with RAY_ADDRESS set), or with an
explicit address, and otherwise starts a private local Ray; it never attaches to a Ray that another
process on this machine started for itself. Either way it says which, with the resources it found
("attached to Ray cluster at 10.0.0.5:6379: 3 nodes, 20 CPUs, 2 GPUs" / "started a private local
Ray (2 CPUs, 0 GPUs)"), and it refuses a cluster whose Ray is not the pinned version.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys

import ray
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from scalable_xmr.distributed import reaper
from scalable_xmr.distributed.logs import quiet_forwarded, ray_init_options
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
    """Attach to a Ray cluster, or start a local one; prints (to stderr) and returns where it runs.

    ``address=None``: attach to the cluster when running under ``ray submit`` (or with RAY_ADDRESS
    set), else start a private local Ray. ``"auto"`` attaches to a cluster started on this machine
    with ``ray start``; ``"local"`` always starts one; anything else is a cluster address. A cluster
    whose Ray is not the version this package pins is refused with one line naming both.
    """
    global _STARTED_LOCAL
    if ray.is_initialized():
        return _say(f"using the Ray already running in this process: {_resources()}")
    # Workers ignore Ctrl-C: the driver alone handles it (distributed/signals.py); the libraries'
    # logs stay warnings and errors unless --verbose / XMR_DEBUG=1 (distributed/logs.py).
    options = ray_init_options()
    if address is None and _on_cluster_head():
        address = "auto"
    if address not in (None, "local"):
        try:
            ray.init(address=address, **options)
        except RuntimeError as e:  # ray.init refuses a cluster of another Ray/Python version
            versions = versions_in_mismatch(str(e))
            if versions is None:
                raise
            raise InputError(mismatch_message(address, *versions, ray_pin())) from None
        quiet_forwarded()
        where = ray.get_runtime_context().gcs_address or address
        problem = pin_problem(ray.__version__, ray_pin(), where)
        if problem:
            ray.shutdown()
            raise InputError(problem)
        return _say(f"attached to Ray cluster at {where}: {_resources()}")
    # Ray 2.60 announces on every local start that token authentication is on (its secure
    # default, which we keep): one library line before every job's own. Only that notice is muted.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options)
    quiet_forwarded()
    _STARTED_LOCAL = True
    reaper.watch()  # this private Ray dies with this process, even on SIGKILL (distributed/reaper.py)
    res = ray.cluster_resources()
    return _say(f"started a private local Ray ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)")


def started_local() -> bool:
    """Whether :func:`connect` started this process's Ray (a private local one)."""
    return _STARTED_LOCAL


def _say(line: str) -> str:
    print(line, file=sys.stderr, flush=True)
    return line


def _resources() -> str:
    res = ray.cluster_resources()
    n = len(alive_nodes())
    return f"{n} node{'s' if n != 1 else ''}, {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


def alive_nodes() -> list[dict]:
    """``ray.nodes()`` less the nodes that are gone (Ray keeps dead nodes in that list)."""
    return [n for n in ray.nodes() if n.get("Alive")]


def ray_pin() -> str | None:
    """The Ray version specifier this package was installed with (``==2.60.*``); None when it is
    not installed as a distribution (run from a source tree)."""
    try:
        requires = importlib.metadata.requires("scalable_xmr") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in requires:
        req = Requirement(line)
        if req.name == "ray" and req.marker is None:
            return str(req.specifier) or None
    return None


def pin_problem(cluster_ray: str, pin: str | None, where: str) -> str | None:
    """One line when a cluster's Ray version is outside the package's pin, else None."""
    if pin is None or SpecifierSet(pin).contains(cluster_ray, prereleases=True):
        return None
    return (f"Ray cluster at {where} runs Ray {cluster_ray}, but scalable_xmr pins ray{pin}: install "
            f"the pinned Ray on every node (pip install 'ray[default,train,tune,serve]{pin}') or use a "
            "cluster of that version")


_MISMATCH = re.compile(r"Ray:\s*(\S+)\s*Python:\s*(\S+)")


def versions_in_mismatch(message: str) -> tuple[str, str, str, str] | None:
    """(cluster Ray, cluster Python, this Ray, this Python) from ray.init's "Version mismatch"
    error (ray._private.utils.check_version_info), or None for any other error."""
    if "Version mismatch" not in message:
        return None
    found = _MISMATCH.findall(message)
    if len(found) != 2:
        return None
    (cluster_ray, cluster_py), (my_ray, my_py) = found
    return cluster_ray, cluster_py, my_ray, my_py


def mismatch_message(address: str, cluster_ray: str, cluster_py: str, my_ray: str, my_py: str,
                     pin: str | None) -> str:
    pinned = f"; scalable_xmr pins ray{pin}" if pin else ""
    return (f"Ray cluster at {address} runs Ray {cluster_ray} on Python {cluster_py}, this job Ray "
            f"{my_ray} on Python {my_py}{pinned}: run the job with the cluster's Ray and Python "
            "(e.g. through `ray submit` / `ray job submit`), or start the cluster with the pinned Ray")


def describe_cluster() -> str:
    res = ray.cluster_resources()
    parts = [f"{res.get(k, 0):g} {k}" for k in ("CPU", "GPU")]
    return ", ".join(parts) + f", {len(alive_nodes())} node(s)"


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def has_gpus() -> bool:
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1


def largest_node() -> dict[str, float]:
    """The CPU and GPU count of the biggest alive node (what one actor can be given at most)."""
    nodes = [n["Resources"] for n in alive_nodes()]
    return {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}


def can_autoscale() -> bool:
    """True on a cluster-launcher head node, whose autoscaler may still bring up GPU workers."""
    return not _STARTED_LOCAL and os.path.isfile(os.path.expanduser("~/ray_bootstrap_config.yaml"))


def check_gpus(gpus_per_actor: float, flag: str) -> None:
    """Fail fast when an actor asks for more GPUs than any node has and the cluster cannot add a
    bigger node (``flag`` names the option the user set, e.g. ``--gpus-per-modality``)."""
    if gpus_per_actor <= 0 or can_autoscale():
        return
    problem = gpu_problem(gpus_per_actor, flag, ray.cluster_resources().get("GPU", 0),
                          largest_node()["GPU"], describe_cluster())
    if problem:
        raise InputError(problem)


def gpu_problem(gpus_per_actor: float, flag: str, total: float, largest: float, described: str) -> str | None:
    """Why ``gpus_per_actor`` GPUs per actor can never be placed (none at all; more than the
    largest node has: one actor cannot span nodes), or None."""
    if total == 0:
        return (f"{flag} {gpus_per_actor:g} but this Ray cluster has no GPUs ({described}); "
                "use 0 to train on CPUs")
    return node_problem("GPU", gpus_per_actor, flag, largest, described)


def node_problem(key: str, per_actor: float, flag: str, largest: float, described: str) -> str | None:
    """Why an actor asking ``per_actor`` of ``key`` (``"CPU"``/``"GPU"``) can never be placed when
    the largest node has ``largest`` (one actor cannot span nodes), or None. The one place that
    says so: :func:`gpu_problem` (before a job writes anything) and the actor launcher
    (distributed/actors.py) both use it."""
    if per_actor > largest:
        return (f"{flag} {per_actor:g}: no node of this cluster has that many {key}s (the largest "
                f"has {largest:g}; {described}); an actor runs on one node")
    return None


def workers_problem(workers: int, gpus_per_worker: float, cpus: float | None, total: dict[str, float],
                    described: str) -> str | None:
    """Why ``workers`` data-parallel workers of one modality can never be placed on a cluster with
    ``total`` CPUs and GPUs, or None. The workers may span nodes: what counts is the whole cluster.
    With GPUs, each worker takes ``gpus_per_worker``; on CPUs, the modality's ``cpus`` (None: all
    of the cluster's) are shared by its workers, and a share under one CPU is refused unless
    ``--cpus-per-modality`` asked for it."""
    flag = f"--workers-per-modality {workers}"
    if gpus_per_worker > 0:
        need = workers * gpus_per_worker
        if need > total.get("GPU", 0):
            return (f"{flag} with --gpus-per-worker {gpus_per_worker:g} needs {need:g} GPUs; this cluster "
                    f"has {described}: lower {flag.split()[0]} or pass --gpus-per-worker 0 to train on CPUs")
        return None
    if cpus is None:
        if workers > total.get("CPU", 0):
            return (f"{flag}: this cluster has {described}, fewer CPUs than workers; lower it, or pass "
                    "--cpus-per-modality to share that many CPUs among the workers")
    elif cpus > total.get("CPU", 0):
        return f"--cpus-per-modality {cpus:g}: this cluster has {described}"
    return None


def check_workers(workers: int, gpus_per_worker: float, cpus: float | None) -> None:
    """Fail fast when one modality's data-parallel workers cannot be placed (:func:`workers_problem`);
    an autoscaling cluster is given the benefit of the doubt."""
    if workers <= 1 or can_autoscale():
        return
    problem = workers_problem(workers, gpus_per_worker, cpus, ray.cluster_resources(), describe_cluster())
    if problem:
        raise InputError(problem)
