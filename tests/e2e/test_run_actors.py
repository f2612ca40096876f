"""distributed.run_actors, the one way both jobs run work in Ray actors."""

from __future__ import annotations

import dataclasses
import io
import sys
import time

import pytest
import ray.cloudpickle

from scalable_xmr.distributed.actors import ActorResources, ActorTask, cpu_share, run_actors, with_threads
from scalable_xmr.distributed.progress import ProgressBars
from scalable_xmr.errors import InputError

# The task functions below live in this test module, which Ray's workers cannot import by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclasses.dataclass(frozen=True)
class Job:
    value: int
    num_threads: int | None = None


def double(job: Job, reporter) -> tuple[int, int | None]:
    reporter.event(f"job {job.value} started")
    reporter.progress({"name": f"j{job.value}", "epoch": 1, "epochs": 1, "status": "done"})
    return 2 * job.value, job.num_threads


def refuse(job: Job, reporter) -> None:
    raise InputError(f"value: {job.value} is not allowed")


def sleepy(job: Job, reporter) -> None:
    time.sleep(job.value)


def test_results_by_name_threads_and_progress(ray_local):
    stream = io.StringIO()  # not a terminal: plain progress lines
    bars = ProgressBars(["j1", "j2"], stream=stream)
    tasks = [ActorTask("j1", double, Job(1)), ActorTask("j2", double, Job(2, num_threads=3))]
    results = run_actors(tasks, ActorResources(cpus=0.5, max_restarts=0), bars=bars)
    assert results == {"j1": (2, 1), "j2": (4, 3)}  # an unset num_threads gets the share's whole CPUs
    printed = stream.getvalue()
    assert "job 1 started" in printed and "j2  epoch    1/1  done" in printed


def test_a_user_error_in_an_actor_is_raised_as_itself(ray_local):
    with pytest.raises(InputError, match="^value: 7 is not allowed$"):
        run_actors([ActorTask("bad", refuse, Job(7))], ActorResources(max_restarts=0), show_progress=False)


def test_the_first_error_stops_the_other_actors(ray_local):
    """One actor fails at once while another would run for two minutes: the error comes back
    as itself right away and the other actor is stopped, not left to finish."""
    start = time.monotonic()
    tasks = [ActorTask("slow", sleepy, Job(120)), ActorTask("bad", refuse, Job(3))]
    with pytest.raises(InputError, match="value: 3 is not allowed"):
        run_actors(tasks, ActorResources(cpus=0.5, max_restarts=0), show_progress=False)
    assert time.monotonic() - start < 60


def test_cpu_share_and_threads():
    assert cpu_share(ActorResources(cpus=1.5), 4) == 1.5
    assert cpu_share(ActorResources(gpus=0.5), 4) == 1.0  # beside a GPU: one CPU each
    assert with_threads(Job(1), 2.7).num_threads == 2 and with_threads(Job(1, 5), 2.7).num_threads == 5
    assert with_threads([Job(1), Job(2)], 0.3) == [Job(1, 1), Job(2, 1)]  # at least one thread


def test_an_actor_bigger_than_every_node_fails_at_once(ray_local):
    """--cpus-per-modality 100 waited 60 s for a placement that could never happen (#14, defect 8)."""
    with pytest.raises(InputError, match=r"--cpus-per-modality 100: no node of this cluster has that many "
                                         r"CPUs \(the largest has 2;"):
        run_actors([ActorTask("big", double, Job(1))], ActorResources(cpus=100), show_progress=False)
    resources = ActorResources(cpus=1, flags=("--cpus-per-model", "--gpus-per-model"))
    with pytest.raises(InputError, match="--cpus-per-model 3"):
        run_actors([ActorTask("big", double, Job(1))], dataclasses.replace(resources, cpus=3),
                   show_progress=False)
