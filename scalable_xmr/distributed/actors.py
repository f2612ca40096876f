"""Ray actors wrapping the plain trainers.

An actor receives only a ``ModalityJob`` (paths and a config); it loads its modality's data and P
itself. Ray restarts a crashed actor (``max_restarts``), which re-runs ``__init__`` with the same
job: the trainer then resumes from the last checkpoint in the run store, and the retried ``train``
call (``max_task_retries``) finishes the work.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from scalable_xmr.sdml.trainer import ModalityJob, TrainResult


@ray.remote(num_cpus=0)
class ProgressHub:
    """Latest progress row of every modality, polled by the driver for its progress bars."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.events: list[str] = []

    def update(self, row: dict[str, Any]) -> None:
        self.rows[row["modality"]] = row

    def event(self, text: str) -> None:
        self.events.append(text)

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        events, self.events = self.events, []
        return self.rows, events


def _lookup(hub_name: str | None):
    """Actors get the hub by name: a handle passed as a constructor argument would live in the
    object store, which Ray warns can break actor restarts (ray-project/ray#53727)."""
    return None if hub_name is None else ray.get_actor(hub_name)


def _progress_fn(hub):
    if hub is None:
        return None
    return lambda row: hub.update.remote(row)


class _ModalityWorker:
    def __init__(self, job: ModalityJob, hub_name: str | None = None):
        from scalable_xmr.sdml.trainer import ModalityTrainer

        hub = _lookup(hub_name)
        self.trainer = ModalityTrainer(job, _progress_fn(hub))
        if hub is not None and self.trainer.resumed_at:
            hub.event.remote(
                f"{job.modality}: actor (pid {os.getpid()}) resumed from its checkpoint at epoch "
                f"{self.trainer.epoch}"
            )

    def train(self) -> TrainResult:
        return self.trainer.fit()

    def pid(self) -> int:
        return os.getpid()


class _JointWorker:
    def __init__(self, jobs: list[ModalityJob], hub_name: str | None = None):
        from scalable_xmr.sdml.joint import JointTrainer

        self.trainer = JointTrainer(jobs, _progress_fn(_lookup(hub_name)))

    def train(self) -> dict[str, TrainResult]:
        return self.trainer.fit()


def modality_actor(**options):
    return ray.remote(_ModalityWorker).options(**options)


def joint_actor(**options):
    return ray.remote(_JointWorker).options(**options)


def wait_with_progress(refs, hub, bars, poll_s: float = 0.5) -> None:
    """Block until every ref is done, refreshing the per-modality progress bars meanwhile."""
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        if hub is not None and bars is not None:
            rows, events = ray.get(hub.snapshot.remote())
            bars.update(rows, events)
    if hub is not None and bars is not None:
        rows, events = ray.get(hub.snapshot.remote())
        bars.update(rows, events)
    time.sleep(0)  # yield once so the bars flush before results print
