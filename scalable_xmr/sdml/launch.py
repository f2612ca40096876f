"""Placing modality trainers on a Ray cluster: parallel (SDML-3), serial (SDML-2), joint (SDML-1).

parallel  one actor per modality, all at once in one placement group (gang-scheduled)
serial    one actor at a time, each with the whole share of the cluster a modality may use
joint     one actor holding every modality network, trained in one loop (the baseline)

Each actor runs :func:`~scalable_xmr.sdml.trainer.train_modality` (or
:func:`~scalable_xmr.sdml.joint.train_joint`) through the same
:func:`~scalable_xmr.distributed.actors.run_actors` as the branch job's models.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from scalable_xmr.config import ResourceConfig
from scalable_xmr.distributed.actors import ActorResources, ActorTask, Outcome, run_tasks
from scalable_xmr.distributed.cluster import check_gpus
from scalable_xmr.distributed.progress import ProgressBars
from scalable_xmr.sdml.joint import train_joint
from scalable_xmr.sdml.modality_job import ModalityJob
from scalable_xmr.sdml.trainer import train_modality


def actor_resources(resources: ResourceConfig) -> ActorResources:
    return ActorResources(gpus=resources.gpus_per_modality, cpus=resources.cpus_per_modality,
                          max_restarts=resources.max_restarts,
                          placement_timeout_s=resources.placement_timeout_s)


def check_resources(resources: ResourceConfig) -> None:
    """Fail fast when GPUs are asked of a cluster that has none and cannot get any."""
    check_gpus(resources.gpus_per_modality, "--gpus-per-modality")


def train_modalities(
    jobs: Sequence[ModalityJob], resources: ResourceConfig, show_progress: bool = True
) -> Outcome:
    """Train every job on the cluster with the chosen strategy: results by modality, and the
    modality that failed (serial: the groups before it stay finished; joint: none singled out)."""
    if not jobs:
        return Outcome()
    check_resources(resources)
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
