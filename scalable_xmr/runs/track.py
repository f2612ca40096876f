"""``xmr track``: log a finished run to MLflow from its run store alone, never two parent runs of
one run in one store, and point run.json at the parent it logged to."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from scalable_xmr.errors import RunStateError
from scalable_xmr.runs.session import RunRecords, log_stored_run
from scalable_xmr.store.lock import run_lock
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.runs import job_tracking_uri, recorded_elsewhere
from scalable_xmr.tracking.tracker import Tracker, absolute_tracking_uri, experiment_name


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
                     records: RunRecords) -> TrackOutcome:
    """``xmr track``: log a finished run to MLflow from its run store alone, as its kind's
    ``records`` say (:func:`~scalable_xmr.runs.session.log_stored_run`: a new parent run, or into
    the recorded one), and point run.json at the parent. Never two parents of one run in one store:

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
            outcome = _track(store, meta, tracker, recorded_uri, records)
            if tracker.failure or outcome is None:
                raise RunStateError(f"--tracking-uri {tracker.uri}: MLflow is not reachable "
                                    f"({tracker.failure}); run.json is unchanged")
            if outcome.action != "already":
                meta.mlflow = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                               "parent_run_id": outcome.parent_run_id, "run_dir": store.uri}
                store.write(meta)
    return outcome


def _track(store: RunStore, meta: RunMeta, tracker: Tracker, recorded_uri: str | None,
           records: RunRecords) -> TrackOutcome | None:
    """The one :class:`TrackOutcome` of :func:`log_finished_run` (None: MLflow failed)."""
    if tracker.failure:
        return None
    recorded = (meta.mlflow or {}).get("parent_run_id")
    mine = recorded and not recorded_elsewhere(meta, store.uri)
    run = tracker.active_run(recorded) if mine else None
    if run is not None:
        url = f"{tracker.uri} (experiment {run.info.experiment_id}, run {recorded})"
        children = [u.get("mlflow_run_id") for u in records.units(meta).values()
                    if u.get("status") == "finished"]
        if run.info.status == "FINISHED" and all(tracker.run_is_active(c) for c in children):
            return TrackOutcome("already", recorded, url)
        if not tracker.adopt(recorded):
            return None
        parent = log_stored_run(records, store, meta, tracker, recorded)
        tracker.set_tags(parent, {"xmr.completed_from_store": "true"})
        return None if tracker.failure or parent is None else TrackOutcome("completed", parent, url)
    note = ""
    if recorded and recorded_uri != tracker.uri:
        note = f"run.json's parent run {recorded} is in another store, {recorded_uri}"
    elif recorded:
        note = f"run.json's parent run {recorded} is not in this store any more" if mine else (
            f"a copy: run.json's parent run {recorded} is the original's")
    parent = log_stored_run(records, store, meta, tracker, None)
    if tracker.failure or parent is None:
        return None
    return TrackOutcome("logged", parent, tracker.run_url(parent), note)
