"""What a data-parallel modality's workers and its Ray Data ingest ask of the cluster
(sdml/launch.py), on a pretend 2-CPU cluster without Ray."""

from __future__ import annotations

import pytest

from scalable_xmr.config import ResourceConfig
from scalable_xmr.sdml import launch


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(launch, "cluster_cpus", lambda: 2.0)
    monkeypatch.setattr(launch, "has_gpus", lambda: False)


@pytest.mark.parametrize("workers, stream, per_worker, ingest", [
    (2, False, 1.0, 1.0),  # in memory: the workers share every CPU (ingest unused)
    (2, True, 0.5, 1.0),  # streaming: one CPU left to Ray Data, the other shared by the workers
    (1, True, 1.0, 1.0),
])
def test_streaming_leaves_ray_data_a_cpu_beside_the_workers(two_cpus, workers, stream, per_worker, ingest):
    resources = ResourceConfig(workers_per_modality=workers, stream=stream)
    assert launch.worker_resources(resources) == {"CPU": per_worker}
    assert launch.ingest_limits(resources).cpus == ingest


def test_the_start_line_says_the_modality_streams(two_cpus):
    class Job:
        modality = "image"

    line = launch.workers_line([Job()], ResourceConfig(workers_per_modality=2, stream=True))
    assert line == ("workers: image 2 (DDP, gloo; 0.5 CPU each; streamed by Ray Data, 1 CPU; one modality "
                    "after the other)")
    assert "streamed" not in launch.workers_line([Job()], ResourceConfig(workers_per_modality=2))
    line = launch.workers_line([Job()], ResourceConfig(stream=True))  # W = 1: the modality's actor, no DDP
    assert line == ("workers: image 1 (the modality's actor; 1 CPU; streamed by Ray Data, 1 CPU; "
                    "one modality after the other)")
