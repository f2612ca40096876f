"""What MLflow holds of a run: where a job logs, the parent run run.json recorded, the footer's
line. run.json is written by the run lifecycle alone (runs/: the parent run, ``xmr track``)."""

from __future__ import annotations

from pathlib import Path

from scalable_xmr.store.meta import RunMeta
from scalable_xmr.tracking.tracker import (
    Tracker,
    default_tracking_uri,
)


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
