"""MLflow tracking, on the driver only (docs/metrics.md).

One parent run per job, one nested child run per modality (or model / trial). Tracking failures
never lose training: every result is already in the run store, and a failure here only prints a
warning saying so.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scalable_xmr.uris import scheme
from scalable_xmr.version import __version__

DEFAULT_STORE = "mlflow.db"
# Ray's Jobs API sets this for a `ray job submit` entrypoint (distributed.submission reads it too;
# tracking may not import distributed, docs/architecture.md).
JOB_SUBMISSION_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # scalable_xmr/: where its git commit is read
# MLflow's own tag for the code's commit (its UI shows it); ours for the version and a dirty tree.
GIT_COMMIT_TAG, GIT_DIRTY_TAG, VERSION_TAG = "mlflow.source.git.commit", "xmr.git_dirty", "xmr.version"


CLUSTER_TRACKING_ENV = "XMR_TRACKING_URI"
CLUSTER_TRACKING_FILE = ".xmr/tracking_uri"
LAUNCHER_HEAD_FILE = "ray_bootstrap_config.yaml"  # what the cluster launcher leaves in a head's ~


def cluster_tracking_uri(home: str | Path | None = None, env: Mapping[str, str] = os.environ) -> str | None:
    """The MLflow server of the cluster head this job runs on, or None.

    Only on a head made by the cluster launcher (``~/ray_bootstrap_config.yaml``, as
    distributed/cluster.py detects it): there ``$XMR_TRACKING_URI``, else the first line of
    ``~/.xmr/tracking_uri``. Anywhere else None, so a laptop keeps the local sqlite default."""
    home = Path(home) if home is not None else Path(os.path.expanduser("~"))
    if not (home / LAUNCHER_HEAD_FILE).is_file():
        return None
    uri = env.get(CLUSTER_TRACKING_ENV, "").strip()
    marker = home / CLUSTER_TRACKING_FILE
    if not uri and marker.is_file():
        lines = marker.read_text().split()
        uri = lines[0] if lines else ""
    return uri or None


def default_tracking_uri(output_dir: str | os.PathLike, env: Mapping[str, str] = os.environ) -> str:
    """The MLflow store of a job given no ``--tracking-uri``: on a cluster head made by the
    launcher, its MLflow server (:func:`cluster_tracking_uri`); else ``sqlite:///<abs cwd>/mlflow.db``.

    One store per working directory for every job started there (train, train-pairs, sweep,
    track), and the file MLflow 3 itself defaults to: ``mlflow ui`` run in that directory shows
    runs and sweeps alike. A job records the URI it used (run.json, sweep.json) and keeps to it
    on resume, wherever it is started from. Under ``ray job submit`` the working directory is a
    temporary copy deleted with the job, so there the store goes beside ``output_dir`` (a run or
    sweep directory, which must be absolute there): ``<its parent>/mlflow.db``.
    """
    on_cluster = cluster_tracking_uri(env=env)
    if on_cluster:
        return on_cluster
    if env.get(JOB_SUBMISSION_ENV):
        return f"sqlite:///{Path(output_dir).expanduser().resolve().parent / DEFAULT_STORE}"
    return f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


@functools.lru_cache(maxsize=4)
def source_tags(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """Tags naming the code a parent run was made with: the package version, and in a git
    checkout of the package, its commit and whether the work tree had changes (``git status
    --porcelain`` not empty). Git is asked about the package's own directory only, never a user's
    data; no git, or a package that is not a tracked file of a checkout (an installed wheel, a
    venv inside someone's repository): no commit tag, and no error."""
    tags = {VERSION_TAG: __version__}
    if _git(package_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
        return tags
    commit, status = _git(package_dir, "rev-parse", "HEAD"), _git(package_dir, "status", "--porcelain")
    if commit:
        tags[GIT_COMMIT_TAG] = commit
        if status is not None:
            tags[GIT_DIRTY_TAG] = "true" if status else "false"
    return tags


def _git(directory: Path, *args: str) -> str | None:
    """``git -C directory args`` stdout (stripped), or None when git is missing or fails."""
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              timeout=10, check=False, stdin=subprocess.DEVNULL,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # status: no index write
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def absolute_tracking_uri(uri: str) -> str:
    """Make a sqlite/file URI absolute (Tune and actors run in other working directories).

    MLflow's rule, not the run store's (``scalable_xmr.uris``): ``sqlite:///rel.db`` is made
    absolute; a string without a scheme is a path, a ``.db`` file becoming ``sqlite:///`` and
    anything else a ``file:///`` store; any other scheme (``file://``, ``http(s)://``,
    ``databricks://``) is kept as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if scheme(uri) is None:
        return f"sqlite:///{Path(uri).resolve()}" if uri.endswith(".db") else Path(uri).resolve().as_uri()
    return uri


def experiment_name(uri: str, experiment_id: str | None) -> str | None:
    """The name of experiment ``experiment_id`` at ``uri``; None when unknown or unreachable."""
    if not experiment_id:
        return None
    try:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri).get_experiment(experiment_id).name
    except Exception:  # noqa: BLE001 - tracking must never stop the job; the caller makes a new one
        return None


class Tracker:
    """A thin, failure-tolerant wrapper over ``MlflowClient`` (no global active-run state)."""

    def __init__(self, tracking_uri: str, experiment: str, enabled: bool = True):
        self.uri = absolute_tracking_uri(tracking_uri)
        self.enabled = enabled
        self.client = None
        self.experiment_id: str | None = None
        self.failure: str | None = None  # why tracking stopped mid-job, if it did
        self._kept_params: dict[str, set[str]] = {}  # adopted run -> params it had already
        # A tracking server that went away must not hold a finished job for minutes: MLflow's own
        # defaults retry an HTTP call 7 times with backoff (about 4 min). Ours: 3 tries, ~7 s.
        # Users who set these variables keep their values.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if enabled:
            self._safe(self._connect, experiment)

    def _connect(self, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:///"):
                artifacts = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            self.experiment_id = exp.experiment_id

    def run_is_active(self, run_id: str) -> bool:
        """Whether ``run_id`` exists here and is not deleted (False when tracking is off)."""
        return self.active_run(run_id) is not None

    def active_run(self, run_id: str | None):
        """The MLflow ``Run`` ``run_id`` when it exists here and is not deleted, else None (also
        when tracking is off or MLflow does not answer)."""
        if not run_id or not self.enabled or self.client is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - a missing or unreachable run
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def adopt(self, run_id: str) -> bool:
        """Log into existing run ``run_id`` (``xmr track`` completing a parent whose job stopped
        tracking part-way): new child runs go to its experiment, params it already has are kept
        (MLflow refuses to change one), and the children it has are deleted (MLflow keeps deleted
        runs restorable) so the ones logged now are not duplicates. False when it is not here."""
        run = self.active_run(run_id)
        if run is None:
            return False
        self.experiment_id = run.info.experiment_id
        self._kept_params[run_id] = set(run.data.params)

        def delete_children():
            for child in self.client.search_runs([run.info.experiment_id],
                                                 f"tags.mlflow.parentRunId = '{run_id}'"):
                self.client.delete_run(child.info.run_id)

        self._safe(delete_children)
        return self.failure is None

    def _safe(self, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never kill training
            self.failure = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            warnings.warn(
                f"MLflow tracking failed ({self.failure}); results are safe in the run store, "
                "tracking for this job is now off (`xmr track --run <run>` logs a finished run later)",
                stacklevel=2,
            )
            self.enabled = False
            return None

    # ---- runs ----------------------------------------------------------------------------------
    def start_run(self, name: str, parent_id: str | None = None, tags: dict | None = None) -> str | None:
        """A new run; a parent run (no ``parent_id``) also gets :func:`source_tags`."""
        def go():
            all_tags = dict(tags or {})
            if parent_id:
                all_tags["mlflow.parentRunId"] = parent_id
            else:
                all_tags = {**source_tags(), **all_tags}
            return self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id

        return self._safe(go)

    def live(self, run_id: str | None) -> bool:
        """Whether calls about ``run_id`` go anywhere (a run, tracking on and connected)."""
        return bool(run_id) and self.enabled and self.client is not None

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.live(run_id):
            self._safe(self.client.set_terminated, run_id, status)

    def log_params(self, run_id: str | None, params: dict[str, Any]) -> None:
        if self.live(run_id):
            from mlflow.entities import Param

            kept = self._kept_params.get(run_id, set())
            items = [Param(k, str(v)[:6000]) for k, v in _flatten(params).items() if k not in kept]
            self._safe(self._batched, run_id, params=items)

    def log_metrics(self, run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        self.log_metric_rows(run_id, [(k, float(v), step) for k, v in metrics.items()])

    def log_metric_rows(self, run_id: str | None, rows: Iterable[tuple[str, float, int]]) -> None:
        if self.live(run_id):
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
            self._safe(self._batched, run_id, metrics=items)

    def _batched(self, run_id: str, metrics=(), params=()) -> None:
        metrics, params = list(metrics), list(params)
        for i in range(0, max(len(metrics), 1), 1000):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        for i in range(0, len(params), 100):  # and at 100 params
            self.client.log_batch(run_id, params=params[i : i + 100])

    def log_artifact(self, run_id: str | None, path: str | os.PathLike, subdir: str | None = None) -> None:
        if self.live(run_id) and Path(path).exists():
            fn = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
            self._safe(fn, run_id, str(path), subdir)

    def set_tags(self, run_id: str | None, tags: dict[str, str]) -> None:
        if self.live(run_id):
            self._safe(lambda: [self.client.set_tag(run_id, k, v) for k, v in tags.items()])

    def run_url(self, run_id: str | None) -> str:
        return f"{self.uri} (experiment {self.experiment_id}, run {run_id})" if run_id else "(tracking off)"


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
