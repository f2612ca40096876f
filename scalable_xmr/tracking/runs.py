"""A job's run on both sides: its MLflow parent run kept in step with run.json, and its summary.

Both jobs (SDML and branch models) and the add-modality job open their parent run the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker


@dataclass
class RunSummary:
    """What a training job hands back: where the run is, its metrics, per-actor results, MLflow."""

    run_dir: str
    metrics: dict[str, Any]
    results: dict[str, Any]  # per modality a TrainResult; per branch model a BranchResult
    tracking: str
    seconds: float


def stored_run_url(meta: RunMeta) -> str:
    """Where a run's MLflow parent run is, as run.json recorded it (no connection made)."""
    ml = meta.mlflow or {}
    if not ml.get("parent_run_id"):
        return "(tracking off)"
    return f"{ml['tracking_uri']} (experiment {ml['experiment_id']}, run {ml['parent_run_id']})"


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
    parent = (meta.mlflow or {}).get("parent_run_id") if mode == "resume" else None
    if parent is None:
        parent = tracker.start_run(name, tags={"job": job})
        tracker.log_params(parent, params)
        meta.mlflow = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                       "parent_run_id": parent}
        store.write(meta)
    try:
        yield parent
    except BaseException as e:
        meta.fail(e)
        store.write(meta)
        tracker.end_run(parent, "FAILED")
        raise
    tracker.end_run(parent)
