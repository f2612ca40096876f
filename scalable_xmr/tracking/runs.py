"""A job's run on both sides: its MLflow parent run kept in step with run.json, and its summary.

Both jobs (SDML and branch models) and the add-modality job open their parent run the same way.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalable_xmr.errors import RunStateError
from scalable_xmr.store.lock import run_lock
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker, default_tracking_uri


@dataclass
class RunSummary:
    """What a training job hands back: where the run is, its metrics, per-actor results, MLflow."""

    run_dir: str
    metrics: dict[str, Any]
    results: dict[str, Any]  # per modality a TrainResult; per branch model a BranchResult
    tracking: str
    seconds: float


def stored_run_url(meta: RunMeta, root: str | None = None) -> str:
    """Where a run's MLflow parent run is, as run.json recorded it (no connection made), with a
    note when that cannot be right any more: the run directory was moved or copied since, or its
    sqlite tracking store is gone."""
    ml = meta.mlflow or {}
    if not ml.get("parent_run_id"):
        return "(tracking off)"
    url = f"{ml['tracking_uri']} (experiment {ml['experiment_id']}, run {ml['parent_run_id']})"
    notes = []
    elsewhere = recorded_elsewhere(meta, root)
    if elsewhere:
        notes.append(f"recorded when the run was at {elsewhere}")
    uri = str(ml["tracking_uri"])
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        notes.append("that tracking store is not there any more")
    return url + (f" [{'; '.join(notes)}]" if notes else "")


def tracking_footer(tracker: Tracker, parent: str | None, root: str) -> str:
    """The footer's MLflow line: the parent run, or, when tracking failed during the job, why and
    how to log the run once the tracking server is back."""
    if tracker.failure:
        return (f"(tracking failed during the job: {tracker.failure}; the run store holds everything: "
                f"`xmr track --run {root}` logs it once MLflow is reachable)")
    return tracker.run_url(parent)


def recorded_elsewhere(meta: RunMeta, root: str | None) -> str | None:
    """The directory run.json's MLflow record was made in, when it is not ``root`` (the run was
    moved or copied since); None when it is, or when unknown."""
    recorded = (meta.mlflow or {}).get("run_dir")
    return recorded if root is not None and recorded and recorded != str(root) else None


@contextlib.contextmanager
def parent_run(
    store: RunStore, meta: RunMeta, tracker: Tracker, mode: str, name: str, job: str,
    params: dict[str, Any],
) -> Iterator[str]:
    """The job's MLflow parent run around its work; yields the run id.

    On resume the run recorded in run.json is continued; otherwise a new one is started, given
    ``params`` and recorded in run.json at once. If the body raises (including Ctrl-C), run.json
    says ``failed`` with the error and the MLflow run ends FAILED; the error goes on up.
    """
    stored = meta.mlflow or {}
    parent = stored.get("parent_run_id") if mode == "resume" else None
    elsewhere = recorded_elsewhere(meta, store.uri)
    if parent is not None and elsewhere and tracker.enabled:
        parent = None  # a moved or copied run gets its own parent: the original's stays the original's
    if parent is None:
        tags = {"job": job, "xmr.run_dir": store.uri}
        if elsewhere:
            tags.update({"xmr.copied_from": elsewhere,
                         "xmr.previous_parent_run_id": str(stored.get("parent_run_id"))})
        parent = tracker.start_run(name, tags=tags)
        tracker.log_params(parent, params)
        if tracker.enabled or not stored.get("parent_run_id"):  # --no-tracking keeps what was recorded
            meta.mlflow = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                           "parent_run_id": parent, "run_dir": store.uri}
        store.write(meta)
    try:
        yield parent
    except BaseException as e:
        meta.fail(e)
        store.write(meta)
        tracker.end_run(parent, "FAILED")
        if isinstance(e, KeyboardInterrupt):
            e.xmr_hint = (f"{store.uri} is kept (status failed, finished parts and checkpoints intact); "
                          "run the same command with --resume to continue it")
        raise
    tracker.end_run(parent)


def log_finished_run(store: RunStore, tracking_uri: str | None, experiment: str,
                     log: Callable[[RunStore, RunMeta, Tracker], str | None]) -> str:
    """``xmr track``: log a finished run to MLflow from its run store alone, with ``log`` (the run
    kind's own logging), then point run.json at the new parent run. Returns where it went.

    The URI defaults to the one run.json recorded (else the run's default). MLflow unreachable,
    before or during: one line, run.json unchanged."""
    meta = store.read_finished()
    uri = tracking_uri or (meta.mlflow or {}).get("tracking_uri") or default_tracking_uri(store.root)
    with warnings.catch_warnings():  # a failure is this command's error, not a warning
        warnings.simplefilter("ignore")
        tracker = Tracker(uri, experiment)
        with run_lock(store.root, command=f"xmr track --run {store.uri}"):
            parent = log(store, meta, tracker) if tracker.failure is None else None
            if tracker.failure or parent is None:
                raise RunStateError(f"--tracking-uri {tracker.uri}: MLflow is not reachable "
                                    f"({tracker.failure}); run.json is unchanged")
            meta.mlflow = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                           "parent_run_id": parent, "run_dir": store.uri}
            store.write(meta)
    return tracker.run_url(parent)
