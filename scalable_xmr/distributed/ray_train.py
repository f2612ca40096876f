"""Run one function on W Ray Train workers (TorchTrainer, Train V2): a process group, checkpoints
Ray keeps, restarts of the worker group from the latest one.

``run_workers(fn, payload, group, name=..., storage_path=...)`` calls ``fn(payload, ctx)`` in each
worker, ``ctx`` a :class:`RayRankContext` (rank, world size, device, the latest checkpoint,
``report``), and returns the metrics rank 0 reported last. As with ``run_actors``, ``fn`` is a
module-level function and its payload holds paths and configs, never arrays. Running again with the
same ``name`` and ``storage_path`` resumes from the latest checkpoint (Train V2 has no restore call).

Settings that keep a bad setup from hanging (RAY_NOTES.md, "Ray Train V2"): a worker group that
cannot be placed within ``start_timeout_s`` fails the run after one retry (the controller retries
forever by default), gloo talks over loopback when every node of the cluster has one address (one
machine: a single node, or ``ray.cluster_utils`` nodes; ``GLOO_SOCKET_IFNAME=lo``),
and each worker's OMP threads start at one (the payload sets torch's own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ray
import ray.train
from ray.exceptions import RayTaskError
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    WorkerGroupError,
)
from ray.train.torch import TorchTrainer, get_device

from scalable_xmr.distributed.logs import verbose

T = TypeVar("T")
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Train V2's controller
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # likewise


@dataclass(frozen=True)
class WorkerGroup:
    """The workers of one data-parallel run."""

    workers: int
    use_gpu: bool = False  # one GPU per worker (nccl); gloo on CPUs otherwise
    resources_per_worker: dict[str, float] | None = None  # e.g. {"CPU": 0.5}; Ray's default: 1 CPU
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    start_timeout_s: float = 60.0  # placing and starting the group; then one retry, then failure
    # How often the controller polls each worker. It takes ONE report per worker per poll and keeps
    # a checkpoint only once every worker's report of it arrived; reports wait in the workers'
    # queues meanwhile (lost with a worker that dies) and the run ends only once they are drained.
    # Ray's default, 2 s, adds ~2 s a report when epochs are shorter (bench/train_scale.py).
    poll_interval_s: float = 0.25
    loopback: bool | None = None  # GLOO_SOCKET_IFNAME=lo; None: when every node is on this host


class RayRankContext:
    """A worker's view of its run (the ``ctx`` that ``fn`` receives)."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = str(get_device())  # cuda:<local rank> on a GPU worker, else cpu

    def load_checkpoint(self, loader: Callable[[Path], T]) -> T | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return loader(Path(directory))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        checkpoint = None if checkpoint_dir is None else Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(metrics, checkpoint=checkpoint)

    def train_batches(self, name: str, batch_size: int, *, shuffle_buffer: int | None = None,
                      shuffle_seed: int | None = None) -> Iterable[dict[str, Any]]:
        """This worker's share of the streamed dataset ``name`` as torch tensors on its device, rows
        mixed in a local buffer of ``shuffle_buffer`` rows seeded ``shuffle_seed``. A fresh
        iterable each call: call it once an epoch (an exhausted one yields nothing)."""
        return ray.train.get_dataset_shard(name).iter_torch_batches(
            batch_size=batch_size, local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=shuffle_seed, device=self.device)


def one_host() -> bool:
    """Whether every live node of the cluster has the same address (one machine)."""
    return len({n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}) <= 1


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What TorchTrainer runs in each worker: ``config["fn"](config["payload"], ctx)``."""
    if config["quiet"]:
        # Train V2 gives the worker's root logger INFO on the console, and logs every report there
        # under a logger named by its file's path (not ray.train: LoggingConfig misses it).
        logging.getLogger().setLevel(logging.WARNING)
    config["fn"](config["payload"], RayRankContext())


@contextlib.contextmanager
def _driver_env(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment while Train V2 starts its controller (which
    copies the RAY_TRAIN_* settings it knows from here), restored after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fit_off_main_thread(trainer: TorchTrainer) -> Any:
    """``trainer.fit()`` in a helper thread, the main thread waiting. On the main thread Train V2
    installs a SIGINT handler that it never removes, that turns Ctrl-C into an aborted run which
    ``fit`` returns as if it had ended, and that exits 0 on a second Ctrl-C (also after ``fit``);
    off it (as under Tune), Ctrl-C stays the driver's: a KeyboardInterrupt here, which the job
    records as interrupted (runs/session.py), and the workers end with the driver's job."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # handed to the main thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="xmr-ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_workers(fn: Callable[[Any, RayRankContext], None], payload: Any, group: WorkerGroup, *,
                name: str, storage_path: str, user_errors: tuple[type[Exception], ...] = (),
                callbacks: Sequence[Any] = (), datasets: dict[str, Any] | None = None,
                data_config: Any = None) -> dict[str, Any]:
    """``fn(payload, ctx)`` on ``group.workers`` workers; the metrics rank 0 reported with the
    latest checkpoint (Train V2 keeps no others: report the result with a checkpoint).

    ``datasets`` (Ray Data datasets by name) reach the workers as ``ctx.train_batches``, split and
    limited as ``data_config`` says (distributed/ray_data.py).

    Raises Ray Train's error when the run fails past ``group.max_failures`` restarts; a worker's
    exception of one of ``user_errors`` types is raised as itself (lowest rank first). Train V2
    retries every worker error, a deterministic one too: it comes back after the restarts.
    ``callbacks``: Train ``UserCallback``s of the run, e.g. a sweep trial's ``TuneReportCallback``,
    which hands every report of rank 0 to the Tune trial running this function (tuning/).
    """
    loopback = group.loopback if group.loopback is not None else one_host()
    env = {"OMP_NUM_THREADS": "1"} | ({"GLOO_SOCKET_IFNAME": "lo"} if loopback else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"fn": fn, "payload": payload, "quiet": not verbose()},
        scaling_config=ScalingConfig(num_workers=group.workers, use_gpu=group.use_gpu,
                                     resources_per_worker=group.resources_per_worker),
        run_config=RunConfig(
            name=name, storage_path=storage_path, worker_runtime_env={"env_vars": env},
            callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=group.max_failures, controller_failure_limit=1),
            # the newest checkpoint and the one before it, as an actor keeps last.pt and last.pt.prev
            # (Ray Train keeps every one by default; it never deletes the newest)
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Train's own INFO lines (worker group started, every report and checkpoint) only when
            # --verbose, like every library's (distributed/logs.py)
            logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING")),
        datasets=datasets, **({"dataset_config": data_config} if data_config is not None else {}),
    )
    try:
        with _driver_env({START_TIMEOUT_ENV: str(group.start_timeout_s),
                          POLL_INTERVAL_ENV: str(group.poll_interval_s)}):
            result = _fit_off_main_thread(trainer)
    except WorkerGroupError as e:
        for _, failure in sorted(e.worker_failures.items()):
            cause = failure.as_instanceof_cause() if isinstance(failure, RayTaskError) else failure
            if isinstance(cause, user_errors):
                raise cause from None
        raise
    return dict(result.metrics or {})
