"""Attaching honestly (issue #13 item 5), decided without starting Ray: paths under `ray job submit`,
the Ray version pin, GPUs no node has."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
from one_line import fails_one_line
from ray._private.utils import check_version_info

from scalable_xmr.cli.train import main as train_main
from scalable_xmr.distributed.cluster import (
    gpu_problem,
    mismatch_message,
    node_problem,
    pin_problem,
    ray_pin,
    versions_in_mismatch,
)
from scalable_xmr.distributed.submission import (
    JOB_CONFIG_ENV,
    check_submission_paths,
    job_submission_id,
    relative_local_path,
    submission_path_problem,
)
from scalable_xmr.errors import InputError

# What Ray's JobSupervisor puts in the entrypoint's environment (checked under a real submission by
# tests/e2e/test_cluster_launcher.py).
SUBMITTED = {JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"},
                                         "metadata": {"job_submission_id": "raysubmit_abc"}})}


def test_a_submission_is_recognised_by_the_jobs_api_variable_only():
    assert job_submission_id(SUBMITTED) == "raysubmit_abc"
    assert job_submission_id({}) is None
    assert job_submission_id({"RAY_ADDRESS": "127.0.0.1:6379"}) is None  # `ray submit`: not the Jobs API
    assert job_submission_id({JOB_CONFIG_ENV: "{not json"}) == "unknown id"


@pytest.mark.parametrize(("uri", "relative"), [
    ("runs/x", "runs/x"), ("./runs", "./runs"), ("/abs/runs", None), ("~/runs", None),
    ("sqlite:///mlflow.db", "mlflow.db"), ("sqlite:///sub/m.db", "sub/m.db"),
    ("sqlite:////abs/mlflow.db", None), ("file:./mlruns", "./mlruns"), ("file:mlruns", "mlruns"),
    ("file:///abs/mlruns", None), ("http://127.0.0.1:5000", None), ("s3://bucket/runs/x", None),
])
def test_relative_local_paths(uri, relative):
    assert relative_local_path(uri) == relative


def test_submission_path_problems():
    defaults = {"--run": "runs/<kind>-<date>-<time>"}
    ok = submission_path_problem({"--run": "/shared/runs/x"}, defaults, None, "j")
    assert ok is None  # the default sqlite store sits next to an absolute run: absolute too
    assert submission_path_problem({"--run": "/r"}, defaults, "http://mlflow:5000", "j") is None
    given = submission_path_problem({"--run": "runs/x"}, defaults, None, "raysubmit_1")
    assert given.startswith("--run runs/x: under `ray job submit` (job raysubmit_1) a relative path")
    assert "pass an absolute path" in given and "\n" not in given
    default = submission_path_problem({"--run": None}, defaults, None, "j")
    assert default.startswith("--run not given (default runs/<kind>-<date>-<time>): ")
    tracking = submission_path_problem({"--run": "/r"}, defaults, "sqlite:///mlflow.db", "j")
    assert tracking.startswith("--tracking-uri sqlite:///mlflow.db: ") and "http://" in tracking
    storage = submission_path_problem({"--storage": "sweeps"}, defaults, None, "j")
    assert storage.startswith("--storage sweeps: ")


def test_the_cli_hook_checks_only_under_a_submission():
    args = argparse.Namespace(run="runs/x", tracking_uri=None, no_tracking=False)
    check_submission_paths(args, env={})  # a plain run: relative paths are fine
    with pytest.raises(InputError, match=r"^--run runs/x: under `ray job submit`"):
        check_submission_paths(args, env=SUBMITTED)
    untracked = argparse.Namespace(run="/abs", tracking_uri="mlflow.db", no_tracking=True)
    check_submission_paths(untracked, env=SUBMITTED)  # --no-tracking: the URI is never used


def test_the_job_refuses_a_relative_run_under_a_submission(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(JOB_CONFIG_ENV, SUBMITTED[JOB_CONFIG_ENV])
    err = fails_one_line(train_main, capsys, ["--run", "runs/x", "--no-progress"], "--run runs/x: under")
    assert "raysubmit_abc" in err
    fails_one_line(train_main, capsys, ["--run", str(tmp_path / "r"), "--tracking-uri", "sqlite:///m.db"],
                   "--tracking-uri sqlite:///m.db: under `ray job submit`")
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_a_cluster_outside_the_pin_is_named_with_both_versions():
    assert ray_pin() == "==2.60.*"  # pyproject.toml's pin, as installed
    assert pin_problem("2.60.0", "==2.60.*", "10.0.0.5:6379") is None
    line = pin_problem("2.59.1", "==2.60.*", "10.0.0.5:6379")
    assert line.startswith("Ray cluster at 10.0.0.5:6379 runs Ray 2.59.1, but scalable_xmr pins ray==2.60.*")
    assert pin_problem("2.59.1", None, "x") is None  # not installed as a distribution: nothing to check


def test_rays_own_version_mismatch_error_becomes_one_line():
    mine = ".".join(map(str, sys.version_info[:3]))
    with pytest.raises(RuntimeError) as e:  # the error ray.init raises, made by Ray's own check
        check_version_info({"ray_version": "2.59.1", "python_version": "3.10.4"}, "127.0.0.1:1")
    import ray

    assert versions_in_mismatch(str(e.value)) == ("2.59.1", "3.10.4", ray.__version__, mine)
    assert versions_in_mismatch("Connection refused") is None
    line = mismatch_message("10.0.0.5:6379", "2.59.1", "3.10.4", ray.__version__, mine, "==2.60.*")
    assert line.startswith(f"Ray cluster at 10.0.0.5:6379 runs Ray 2.59.1 on Python 3.10.4, this job Ray "
                           f"{ray.__version__} on Python {mine}; scalable_xmr pins ray==2.60.*")
    assert "\n" not in line


def test_gpus_no_node_offers():
    described = "8 CPU, 3 GPU, 3 node(s)"
    assert gpu_problem(1, "--gpus-per-modality", 3, 1, described) is None
    assert gpu_problem(0.5, "--gpus-per-modality", 3, 1, described) is None
    line = gpu_problem(2, "--gpus-per-modality", 3, 1, described)
    assert line == ("--gpus-per-modality 2: no node of this cluster has that many GPUs "
                    "(the largest has 1; 8 CPU, 3 GPU, 3 node(s)); an actor runs on one node")
    # The actor launcher's own check (distributed/actors.py) says it in the same words.
    assert node_problem("CPU", 100, "--cpus-per-modality", 2, described).startswith(
        "--cpus-per-modality 100: no node of this cluster has that many CPUs (the largest has 2;")
    assert node_problem("CPU", 2, "--cpus-per-modality", 2, described) is None
    none = gpu_problem(1, "--gpus-per-model", 0, 0, "2 CPU, 0 GPU, 1 node(s)")
    assert none.startswith("--gpus-per-model 1 but this Ray cluster has no GPUs (2 CPU, 0 GPU")
