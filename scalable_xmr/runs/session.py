"""One run's lifecycle, the same for every kind of run: :func:`run_session`.

In order, for a training job on a run directory (docs/run-store.md):

1. the run directory is writable; one job at a time holds its lock (taken before Ray starts); an
   object-storage run's mirror is pulled; the plan is made (new, resume, replace) without writing;
2. on ``--resume``, run.json is read once and the kind checks these settings continue it
   (:meth:`RunKind.check_resume`; nothing written); a finished run with nothing to train is only
   read, never rewritten;
3. Ray is connected and the kind checks the cluster can hold its units;
4. run.json is opened: a new :class:`~scalable_xmr.store.meta.RunMeta` (the kind's), or the stored
   one marked running; the MLflow parent run is started or continued (:func:`parent_run`);
5. each unit's settings go on record, then the units train (:meth:`RunKind.train`, a typed
   :class:`~scalable_xmr.distributed.actors.Outcome`); every finished unit is recorded, the failed
   one marked failed with its one line, and on failure the run is marked failed and the error goes
   on up (Ctrl-C as :class:`~scalable_xmr.errors.Interrupted`, saying how to go on);
6. the kind finishes the run (metrics, plots, MLflow children); run.json says finished; then the
   training state goes (``store.training_state.after_finish``) unless ``--keep-checkpoints``.

Run state (run.json) is written here and by the kinds' ``finish``; tracking/ only logs to MLflow.
A kind is SDML's modalities (sdml/job.py) or the image-text models' members (branch/job.py). A job
that adds to a finished run (add-modality, sdml/extend.py) runs through staging.py instead: the run
stays finished, the units train in a staging folder and are committed with one rename each.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scalable_xmr.config import TrackingConfig
from scalable_xmr.distributed.actors import Outcome
from scalable_xmr.distributed.cluster import connect
from scalable_xmr.errors import Interrupted
from scalable_xmr.io import check_writable
from scalable_xmr.store import training_state
from scalable_xmr.store.lock import run_lock
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.runs import job_tracking_uri, recorded_elsewhere, stored_run_url, tracking_footer
from scalable_xmr.tracking.tracker import Tracker


@dataclass
class RunSummary:
    """What a training job hands back: where the run is, its metrics, per-unit results, MLflow,
    and what became of the run's training state (a footer line)."""

    run_dir: str
    metrics: Any  # the kind's metrics.json record (RunRecords.read_metrics)
    results: dict[str, Any]  # what this job trained: per modality a TrainResult, per member a BranchResult
    tracking: str
    seconds: float
    training_state: str = ""


@dataclass(frozen=True)
class SessionOptions:
    """The flags every training job has (the CLI's --run, --resume, --overwrite, ...)."""

    run_dir: str
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False
    tracking: TrackingConfig = TrackingConfig()

    @classmethod
    def of(cls, request: Any) -> SessionOptions:
        """The options of a job's request (a dataclass with these fields)."""
        return cls(request.run_dir, resume=request.resume, overwrite=request.overwrite,
                   keep_checkpoints=request.keep_checkpoints, tracking=request.tracking)


@dataclass(frozen=True)
class RunRecords:
    """How a kind of run keeps its units in run.json and MLflow (the job and ``xmr track``)."""

    kind: str  # RunMeta.kind
    job: str  # the MLflow parent run's "job" tag
    where: str  # the units' training state, as the footer names it (e.g. "modalities/*/checkpoints/")
    # run.json's per-unit entries (modalities or members), by name
    units: Callable[[RunMeta], dict[str, dict[str, Any]]]
    entry: Callable[[Any], dict[str, Any]]  # run.json's record of a finished unit
    # each finished unit's result, as the run store holds it
    stored_results: Callable[[RunStore, RunMeta], dict[str, Any]]
    params: Callable[[RunMeta], dict[str, Any]]  # the parent run's params, from run.json alone
    # (tracker, parent, store, meta, metrics, results): children, metrics and artifacts of a finished run
    log_results: Callable[[Tracker, str | None, RunStore, RunMeta, Any, dict[str, Any]], None]
    # the run's training state, (folders, files), removed once it is finished
    state: Callable[[RunStore, RunMeta], tuple[list[Path], list[Path]]]
    # the kind's one reader of <run>/metrics.json: its typed record (None before the run has one)
    read_metrics: Callable[[RunStore], Any]


class RunKind(Protocol):
    """What one training job (its request bound) plugs into :func:`run_session`."""

    records: RunRecords

    def params(self, meta: RunMeta) -> dict[str, Any]:
        """The MLflow parent run's params (the records' own, plus what only the job knows)."""

    def check_resume(self, store: RunStore, stored: RunMeta) -> None:
        """These settings continue ``stored`` exactly, else one line (nothing written)."""

    def before_ray(self, todo: Sequence[str]) -> None:
        """Said or checked once the units to train are known, before Ray starts."""

    def check_cluster(self) -> None:
        """After Ray is connected, before anything is written: the units fit the cluster."""

    def new_meta(self, store: RunStore) -> RunMeta:
        """A new run's run.json (and its other first files, e.g. SDML's P)."""

    def reopen(self, meta: RunMeta) -> None:
        """A resumed run's run.json before it continues (e.g. units added since)."""

    def specs(self, store: RunStore, meta: RunMeta, todo: Sequence[str]) -> list[Any]:
        """The specs of the units to train (what each actor is handed); their settings go on
        record in ``meta``."""

    def train(self, specs: list[Any]) -> Outcome:
        """Train them on the cluster."""

    def finish(self, store: RunStore, meta: RunMeta, results: dict[str, Any], new: Sequence[str],
               tracker: Tracker, parent: str | None) -> Any:
        """Evaluate, write metrics and plots, log; returns the metrics (the kind's metrics.json
        record; run.json is marked here)."""


def todo_units(records: RunRecords, meta: RunMeta | None, wanted: Sequence[str]) -> list[str]:
    """The ``wanted`` units ``meta`` does not have finished (all of them for a new run)."""
    units = records.units(meta) if meta is not None else {}
    return [u for u in wanted if units.get(u, {}).get("status") != "finished"]


def run_session(kind: RunKind, wanted: Sequence[str], opts: SessionOptions,
                address: str | None = None) -> RunSummary:
    """Train ``wanted`` units of ``kind`` on the run ``opts.run_dir`` (the steps of the module's
    docstring)."""
    start = time.perf_counter()
    check_writable(opts.run_dir, "--run")
    store = RunStore(opts.run_dir, pull=False)  # refresh() below, under the lock, pulls it
    with run_lock(store.root):  # one job at a time on a run directory, taken before Ray starts
        store.refresh()  # an object-storage run: its local mirror as the bucket holds it
        mode, stored = store.survey(overwrite=opts.overwrite, resume=opts.resume)
        if mode == "resume":
            kind.check_resume(store, stored)  # the one resume check: nothing written
        records = kind.records
        todo = todo_units(records, stored if mode == "resume" else None, wanted)
        done = mode == "resume" and stored.status == "finished" and not todo
        if done and opts.keep_checkpoints:
            training_state.refuse_keep_on_finished(store.uri, records.state(store, stored)[0])
        if todo:
            kind.before_ray(todo)
        connect(address)
        kind.check_cluster()  # before anything is written
        mode = store.prepare(mode)
        if done:  # nothing to train: a finished run is read, never rewritten (tracking flags or not)
            return RunSummary(store.uri, records.read_metrics(store), {}, stored_run_url(stored, store.uri),
                              time.perf_counter() - start)
        return _train(kind, store, stored if mode == "resume" else None, todo, opts, start)


def _train(kind: RunKind, store: RunStore, stored: RunMeta | None, todo: list[str],
           opts: SessionOptions, start: float) -> RunSummary:
    if stored is None:
        meta = kind.new_meta(store)
    else:
        meta = stored
        kind.reopen(meta)
        meta.status = "running"
    store.write(meta)
    tracking = opts.tracking
    tracker = Tracker(job_tracking_uri(tracking.tracking_uri, meta, store.root), tracking.experiment,
                      tracking.enabled)
    records = kind.records
    results = records.stored_results(store, meta)
    specs = kind.specs(store, meta, todo)  # puts each unit's settings on record in meta
    with parent_run(store, meta, tracker, "resume" if stored else "new", records.job,
                    kind.params(meta)) as parent:
        store.write(meta)  # every unit's settings are on record before it trains (resume checks them)
        outcome = kind.train(specs)
        if outcome.error is None:
            store.refresh()  # an object-storage run: what the actors uploaded, from any node
        record(records, store, meta, outcome)
        if outcome.error is not None:
            raise outcome.error
        results.update(outcome.results)
        metrics = kind.finish(store, meta, results, todo, tracker, parent)
    dirs, files = records.state(store, meta)
    state = training_state.after_finish(store.uri, dirs, opts.keep_checkpoints, files=files,
                                        where=records.where)
    return RunSummary(store.uri, metrics, outcome.results, tracking_footer(tracker, parent, store.uri),
                      time.perf_counter() - start, training_state=state)


def record(records: RunRecords, store: RunStore, meta: RunMeta, outcome: Outcome) -> None:
    """Every finished unit of ``outcome`` on record (each written as soon as it is known); the
    failed one marked failed with its one line."""
    units = records.units(meta)
    for name, result in outcome.results.items():
        if name in units:
            units[name].pop("error", None)  # a unit that failed before and now finished
            units[name].update(records.entry(result))
            store.write(meta)
    if outcome.failed in units and outcome.error is not None:
        units[outcome.failed].update(status="failed", error=str(outcome.error))
        store.write(meta)


@contextlib.contextmanager
def parent_run(store: RunStore, meta: RunMeta, tracker: Tracker, mode: str, job: str,
               params: dict[str, Any]) -> Iterator[str | None]:
    """The job's work inside its MLflow parent run (:func:`open_parent`); yields the run id. If the
    body raises, the MLflow run ends FAILED and run.json says failed (:func:`failing`)."""
    with failing(store, meta):
        parent = open_parent(store, meta, tracker, mode, job, params)
        with ending(tracker, parent):
            yield parent


@contextlib.contextmanager
def failing(store: RunStore, meta: RunMeta) -> Iterator[None]:
    """If the body raises (Ctrl-C included), run.json says ``failed`` with the error, which goes on
    up; Ctrl-C as :class:`Interrupted`, saying what was kept and how to go on."""
    try:
        yield
    except BaseException as e:
        meta.fail(e)
        store.write(meta)
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
            raise Interrupted(f"{store.uri} is kept (status failed, finished parts and checkpoints "
                              "intact); run the same command with --resume to continue it") from e
        raise


@contextlib.contextmanager
def ending(tracker: Tracker, parent: str | None) -> Iterator[None]:
    """The MLflow parent run ends FINISHED with the body, or FAILED if it raises."""
    try:
        yield
    except BaseException:
        tracker.end_run(parent, "FAILED")
        raise
    tracker.end_run(parent)


def open_parent(store: RunStore, meta: RunMeta, tracker: Tracker, mode: str, job: str,
                params: dict[str, Any]) -> str | None:
    """The job's MLflow parent run id: on resume the one run.json records is continued; otherwise
    (or when that one is gone, or the run was moved or copied) a new one is started with
    ``params`` and recorded in run.json at once."""
    stored = meta.mlflow or {}
    parent = stored.get("parent_run_id") if mode == "resume" else None
    elsewhere = recorded_elsewhere(meta, store.uri)
    if parent is not None and elsewhere and tracker.enabled:
        parent = None  # a moved or copied run gets its own parent: the original's stays the original's
    gone = parent is not None and tracker.enabled and not tracker.run_is_active(parent)
    if gone:  # resumed into another store (--tracking-uri), or the recorded parent was deleted
        parent = None
    if parent is not None:
        return parent
    tags = {"job": job, "xmr.run_dir": store.uri}
    if elsewhere:
        tags.update({"xmr.copied_from": elsewhere,
                     "xmr.previous_parent_run_id": str(stored.get("parent_run_id"))})
    elif gone:
        tags.update({"xmr.previous_parent_run_id": str(stored.get("parent_run_id")),
                     "xmr.previous_tracking_uri": str(stored.get("tracking_uri"))})
    parent = tracker.start_run(f"{meta.kind}:{store.root.name}", tags=tags)
    tracker.log_params(parent, params)
    if tracker.enabled or not stored.get("parent_run_id"):  # --no-tracking keeps what was recorded
        meta.mlflow = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                       "parent_run_id": parent, "run_dir": store.uri}
    store.write(meta)
    return parent


def log_stored_run(records: RunRecords, store: RunStore, meta: RunMeta, tracker: Tracker,
                   parent: str | None = None) -> str | None:
    """Log a finished run to MLflow from its run store alone (``xmr track``: e.g. after the
    tracking server was down during the job): into ``parent``, else a new parent run with the job's
    params; the same children, metrics and artifacts the job logs."""
    parent = parent or tracker.start_run(f"{meta.kind}:{store.root.name}", tags={
        "job": records.job, "xmr.run_dir": store.uri, "xmr.logged_from_store": "true"})
    tracker.log_params(parent, records.params(meta))
    results = records.stored_results(store, meta)
    records.log_results(tracker, parent, store, meta, records.read_metrics(store), results)
    tracker.end_run(parent)
    return parent
