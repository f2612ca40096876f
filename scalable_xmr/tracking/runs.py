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
from scalable_xmr.tracking.tracker import (
    Tracker,
    absolute_tracking_uri,
    default_tracking_uri,
    experiment_name,
)


@dataclass
class RunSummary:
    """What a training job hands back: where the run is, its metrics, per-actor results, MLflow."""

    run_dir: str
    metrics: dict[str, Any]
    results: dict[str, Any]  # per modality a TrainResult; per branch model a BranchResult
    tracking: str
    seconds: float


# A cluster head advertises its MLflow server to jobs started on it (cluster.yaml's head start
# commands write the file): the env variable wins over the file.
def job_tracking_uri(given: str | None, meta: RunMeta, root: str | Path) -> str:
    """Where a job on run ``root`` logs: ``--tracking-uri`` when given; else the store run.json
    recorded (a resumed or re-logged run stays in the store it started in, whatever the default
    is now: older runs recorded ``<parent of the run>/mlflow.db``); else :func:`default_tracking_uri`
    (on a cluster head, its MLflow server)."""
    return given or (meta.mlflow or {}).get("tracking_uri") or default_tracking_uri(root)


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
    gone = parent is not None and tracker.enabled and not tracker.run_is_active(parent)
    if gone:  # resumed into another store (--tracking-uri), or the recorded parent was deleted
        parent = None
    if parent is None:
        tags = {"job": job, "xmr.run_dir": store.uri}
        if elsewhere:
            tags.update({"xmr.copied_from": elsewhere,
                         "xmr.previous_parent_run_id": str(stored.get("parent_run_id"))})
        elif gone:
            tags.update({"xmr.previous_parent_run_id": str(stored.get("parent_run_id")),
                         "xmr.previous_tracking_uri": str(stored.get("tracking_uri"))})
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


@dataclass(frozen=True)
class TrackOutcome:
    """What ``xmr track`` did with a run: ``logged`` it under a new parent run, ``completed`` the
    parent run.json records (its job stopped tracking part-way), or found it ``already`` logged."""

    action: str  # "logged" | "completed" | "already"
    parent_run_id: str
    url: str  # the store, experiment and parent run
    note: str = ""  # why a new parent was made although run.json records one

    def line(self, run: str) -> str:
        if self.action == "already":
            return f"{run} is already logged to MLflow: {self.url}; nothing to do"
        what = "into its parent run" if self.action == "completed" else "under a new parent run"
        return f"logged {run} to MLflow {what}: {self.url}" + (f" ({self.note})" if self.note else "")


def log_finished_run(store: RunStore, tracking_uri: str | None, experiment: str | None,
                     log: Callable[[RunStore, RunMeta, Tracker, str | None], str | None]) -> TrackOutcome:
    """``xmr track``: log a finished run to MLflow from its run store alone, with ``log`` (the run
    kind's own logging: a new parent run when given None, else into that one), and point run.json
    at the parent. Never two parents of one run in one store:

    - the parent run.json records is in this store: finished with every part's child run there,
      the run is already logged (nothing written); else (its job's tracking stopped part-way) it is
      completed: its partial children are replaced, params it has are kept;
    - otherwise (tracked elsewhere, never tracked, the parent deleted, a copied run) a new parent.

    The URI defaults to the one run.json recorded (else :func:`default_tracking_uri`), the experiment
    to the recorded one's name (else scalable_xmr). MLflow unreachable, before or during: one
    line, run.json unchanged."""
    meta = store.read_finished()
    ml = meta.mlflow or {}
    uri = absolute_tracking_uri(job_tracking_uri(tracking_uri, meta, store.root))
    recorded_uri = absolute_tracking_uri(ml["tracking_uri"]) if ml.get("tracking_uri") else None
    if experiment is None:
        same = uri == recorded_uri
        experiment = (experiment_name(uri, ml.get("experiment_id")) if same else None) or "scalable_xmr"
    with warnings.catch_warnings():  # a failure is this command's error, not a warning
        warnings.simplefilter("ignore")
        tracker = Tracker(uri, experiment)
        with run_lock(store.root, command=f"xmr track --run {store.uri}"):
            outcome = _track(store, meta, tracker, recorded_uri, log)
            if tracker.failure or outcome is None:
                raise RunStateError(f"--tracking-uri {tracker.uri}: MLflow is not reachable "
                                    f"({tracker.failure}); run.json is unchanged")
            if outcome.action != "already":
                meta.mlflow = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                               "parent_run_id": outcome.parent_run_id, "run_dir": store.uri}
                store.write(meta)
    return outcome


def _track(store: RunStore, meta: RunMeta, tracker: Tracker, recorded_uri: str | None,
           log: Callable[[RunStore, RunMeta, Tracker, str | None], str | None]) -> TrackOutcome | None:
    """The one :class:`TrackOutcome` of :func:`log_finished_run` (None: MLflow failed)."""
    if tracker.failure:
        return None
    recorded = (meta.mlflow or {}).get("parent_run_id")
    mine = recorded and not recorded_elsewhere(meta, store.uri)
    run = tracker.active_run(recorded) if mine else None
    if run is not None:
        url = f"{tracker.uri} (experiment {run.info.experiment_id}, run {recorded})"
        if run.info.status == "FINISHED" and all(tracker.run_is_active(c) for c in _children(meta)):
            return TrackOutcome("already", recorded, url)
        if not tracker.adopt(recorded):
            return None
        parent = log(store, meta, tracker, recorded)
        tracker.set_tags(parent, {"xmr.completed_from_store": "true"})
        return None if tracker.failure or parent is None else TrackOutcome("completed", parent, url)
    note = ""
    if recorded and recorded_uri != tracker.uri:
        note = f"run.json's parent run {recorded} is in another store, {recorded_uri}"
    elif recorded:
        note = f"run.json's parent run {recorded} is not in this store any more" if mine else (
            f"a copy: run.json's parent run {recorded} is the original's")
    parent = log(store, meta, tracker, None)
    if tracker.failure or parent is None:
        return None
    return TrackOutcome("logged", parent, tracker.run_url(parent), note)


def _children(meta: RunMeta) -> list[str | None]:
    """The child run recorded for each finished modality (SDML) or member (branch models)."""
    parts = (meta.modalities if meta.kind == "sdml" else meta.members) or {}
    return [p.get("mlflow_run_id") for p in parts.values() if p.get("status") == "finished"]
