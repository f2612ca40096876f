"""Paths that survive a ``ray job submit``: the checks, without Ray (the CLI runs them first).

The Jobs API runs the entrypoint in a temporary working directory (the uploaded ``--working-dir``)
that is deleted with the job, so a relative ``--run`` or a relative sqlite MLflow store would be
written there and lost. Under a submission they are refused with one line saying what to pass.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping

from scalable_xmr.errors import InputError
from scalable_xmr.uris import scheme

# Ray's JobSupervisor starts the entrypoint with this variable set to {"runtime_env": ...,
# "metadata": {"job_submission_id": ...}} (ray/dashboard/modules/job/job_supervisor.py,
# _get_driver_env_vars; the name is ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR).
# `ray submit` and a plain `python job.py` do not set it.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_submission_id(env: Mapping[str, str]) -> str | None:
    """The Jobs API submission id when this process is a ``ray job submit`` entrypoint, else None."""
    raw = env.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        metadata = {}
    return str(metadata.get("job_submission_id") or "unknown id")


def relative_local_path(uri: str) -> str | None:
    """The relative local path ``uri`` names, or None (absolute, ``~/...``, or any other scheme).

    MLflow forms: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute; ``file:rel``
    and ``file:./rel`` relative, ``file:///abs`` absolute; a bare path is a path."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return None if path.startswith("/") or path == ":memory:" or not path else path
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        return None if path.startswith("/") else path
    if scheme(uri) is not None:
        return None  # http(s), s3, databricks...: not a local path
    return None if os.path.isabs(os.path.expanduser(uri)) else uri


def submission_path_problem(paths: Mapping[str, str | None], defaults: Mapping[str, str],
                            tracking_uri: str | None, submission_id: str) -> str | None:
    """Why these paths would be lost under submission ``submission_id``, or None.

    ``paths``: flag -> value given (None: not given, so ``defaults[flag]`` applies);
    ``tracking_uri``: the --tracking-uri given (None: the default next to the run, which is
    absolute when the run is)."""
    lost = ("under `ray job submit` (job {sid}) a relative path lands in the job's temporary working "
            "directory, which is deleted with the job: pass an absolute path (a shared filesystem on "
            "a multi-node cluster){extra}")
    for flag, value in paths.items():
        given = value if value is not None else defaults.get(flag)
        if given is None or relative_local_path(given) is None:
            continue
        what = f"{flag} {given}" if value is not None else f"{flag} not given (default {given})"
        return f"{what}: " + lost.format(sid=submission_id, extra=f", e.g. {flag} /shared/runs/x")
    if tracking_uri is not None and relative_local_path(tracking_uri) is not None:
        return f"--tracking-uri {tracking_uri}: " + lost.format(
            sid=submission_id, extra=", e.g. sqlite:////abs/mlflow.db, or an http:// MLflow server")
    return None


# Output paths a job keeps (attribute -> flag), and what a missing one defaults to.
KEPT_PATHS = {"run": "--run", "storage": "--storage"}
KEPT_DEFAULTS = {"--run": "runs/<kind>-<date>-<time>"}


def check_submission_paths(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> None:
    """Under `ray job submit`, refuse output paths that would land in the job's temporary working
    directory (one line naming the flag); anywhere else, do nothing."""
    submission = job_submission_id(env)
    if submission is None:
        return
    paths = {flag: getattr(args, attr) for attr, flag in KEPT_PATHS.items() if hasattr(args, attr)}
    tracking = None if getattr(args, "no_tracking", False) else getattr(args, "tracking_uri", None)
    problem = submission_path_problem(paths, KEPT_DEFAULTS, tracking, submission)
    if problem:
        raise InputError(problem)
