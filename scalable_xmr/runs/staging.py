"""The lifecycle of a job that adds to a finished run: :func:`run_staged` (add-modality).

Unlike a training job (session.py), it never marks the run running: the run stays finished, and
readers trust run.json alone. In order:

1. the run is finished (checked before anything is locked), then under its lock (an
   object-storage run's mirror pulled) the kind checks everything it can (:meth:`StagedKind.check`):
   nothing is written before all of it passed; then Ray is connected and the cluster checked;
2. MLflow: by default the run's own parent run gets the new children; another store or
   experiment (or a parent that is gone, or a moved run) gets a new parent linked to the old one
   (:func:`open_tracking`);
3. the units train in a staging folder ``<run>/.staging/add-<id>/`` (:class:`Staging`; one left
   by a killed job is removed first); their training state is dropped there unless
   ``--keep-checkpoints`` (nothing resumes an add job: a killed one starts again);
4. the kind commits (:meth:`StagedKind.commit`) through a :class:`Commit`: folders moved in with one
   rename each, then metrics and plots, run.json last (the commit point). An exception during the
   commit is rolled back (the run byte-identical); a kill leaves at most what readers ignore.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Protocol

from scalable_xmr.config import TrackingConfig
from scalable_xmr.distributed.actors import Outcome
from scalable_xmr.distributed.cluster import connect
from scalable_xmr.errors import Interrupted
from scalable_xmr.io import atomic_write_bytes, check_writable, fileops
from scalable_xmr.runs.session import RunSummary
from scalable_xmr.store import training_state
from scalable_xmr.store.lock import run_lock
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.runs import recorded_elsewhere, tracking_footer
from scalable_xmr.tracking.tracker import (
    Tracker,
    absolute_tracking_uri,
    default_tracking_uri,
    experiment_name,
)

STAGING = ".staging"


class Staging:
    """``<run>/.staging/add-<id>/``: a run-shaped folder the trainers write to, ``files`` of the
    run copied into it first (e.g. SDML's P)."""

    def __init__(self, store: RunStore, staged: tuple[str, ...] = ()):
        self.root = store.root / STAGING / f"add-{uuid.uuid4().hex[:12]}"
        self.root.mkdir(parents=True)
        for name in staged:
            fileops.copy(store.root / name, self.root / name)
        self.store = RunStore(self.root)
        self.aside = self.root / "aside"  # folders moved out of the run during the commit

    def remove(self) -> None:
        fileops.remove(self.root)
        with contextlib.suppress(OSError):
            self.root.parent.rmdir()  # only if empty


class Commit:
    """A commit into ``store`` that can be undone: the bytes of every file it may rewrite
    (run.json, metrics.json, plots/*) are kept, and every folder it moves is recorded."""

    def __init__(self, store: RunStore, staging: Staging):
        self.store, self.staging = store, staging
        paths = [store.run_json, store.metrics_path]
        if store.plots_dir.is_dir():
            paths += sorted(p for p in store.plots_dir.iterdir() if p.is_file())
        self.snapshot = {p: p.read_bytes() if p.is_file() else None for p in paths}
        self.moved_in: list[Path] = []
        self.moved_aside: list[tuple[Path, Path]] = []

    def move_in(self, source: Path, dest: Path) -> None:
        """``source`` (in the staging folder) becomes ``dest`` with one rename; what was at
        ``dest`` (a replaced unit, or an unlisted leftover of a killed job) is moved aside."""
        if dest.exists():
            self.staging.aside.mkdir(exist_ok=True)
            os.replace(dest, self.staging.aside / dest.name)
            self.moved_aside.append((self.staging.aside / dest.name, dest))
        dest.parent.mkdir(exist_ok=True)
        fileops.replace(source, dest)  # the folder appears whole; a bucket gets it before run.json
        self.moved_in.append(dest)

    def rollback(self) -> None:
        """Undo: new folders out, old ones back, files restored, run.json last."""
        rollback(self.store, self.snapshot, self.moved_in, self.moved_aside)


def rollback(store: RunStore, snapshot: dict[Path, bytes | None], moved_in: list[Path],
             moved_aside: list[tuple[Path, Path]]) -> None:
    """Undo a failed commit (:meth:`Commit.rollback`); a failure to undo is a warning: the run
    still loads, run.json being either the old one or the committed one."""
    try:
        for dest in moved_in:
            fileops.remove(dest, missing_ok=False)
        for aside, dest in moved_aside:
            fileops.replace(aside, dest)
        if store.plots_dir.is_dir():
            for p in store.plots_dir.iterdir():
                if p.is_file() and p not in snapshot:
                    fileops.remove(p)
        for path, data in sorted(snapshot.items(), key=lambda kv: kv[0] == store.run_json):
            if data is None:
                fileops.remove(path)
            elif not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)
    except OSError as e:
        warnings.warn(f"{store.root}: could not fully undo the failed add ({e})", stacklevel=2)


class StagedKind(Protocol):
    """What an add job plugs into :func:`run_staged`."""

    job: str  # a new MLflow parent run's "job" tag
    staged_files: tuple[str, ...]  # files of the run the staging folder needs a copy of
    command: str  # how the user runs the job again (the Ctrl-C line)
    state_where: str  # the new units' training state, as the footer names it

    def state(self, staging: RunStore, units: list[str]) -> list[Path]:
        """The new units' training-state folders in the staging folder."""

    def check(self, store: RunStore, meta: RunMeta) -> None:
        """Everything checkable before anything is written (one line each)."""

    def before_ray(self) -> None:
        """Said once the job is checked, before Ray starts."""

    def check_cluster(self) -> None:
        """After Ray is connected, before anything is written."""

    def params(self, meta: RunMeta) -> dict[str, Any]:
        """A new MLflow parent run's params."""

    def specs(self, staging: RunStore, meta: RunMeta) -> list[Any]:
        """The specs of the units, writing into ``staging``."""

    def train(self, specs: list[Any]) -> Outcome:
        """Train them on the cluster."""

    def commit(self, commit: Commit, meta: RunMeta, results: dict[str, Any], tracker: Tracker,
               parent: str | None) -> Any:
        """Move the units in, write metrics and plots, then run.json; returns the metrics (the
        kind's metrics.json record)."""

    def after_commit(self, tracker: Tracker, meta: RunMeta, metrics: Any) -> None:
        """MLflow logging that needs the committed run."""


def run_staged(kind: StagedKind, run_dir: str, tracking: TrackingConfig | None, keep_checkpoints: bool,
               address: str | None = None) -> RunSummary:
    """Add ``kind``'s units to the finished run ``run_dir`` (the steps of the module's docstring)."""
    start = time.perf_counter()
    store = RunStore(run_dir)
    store.read_finished()  # a clear error before locking anything
    with run_lock(store.root):  # one job at a time on a run directory
        store.refresh()  # an object-storage run: its local mirror as the bucket holds it
        meta = store.read_finished()
        kind.check(store, meta)
        check_writable(store.root, "--run")
        kind.before_ray()
        connect(address)
        kind.check_cluster()
        tracker, parent, own_parent = open_tracking(store, meta, tracking, kind.job, kind.params(meta))
        fileops.remove(store.root / STAGING)  # left by a killed add job (and from the bucket)
        staging = Staging(store, kind.staged_files)
        try:
            results = kind.train(kind.specs(staging.store, meta)).value()
            store.refresh()  # an object-storage run: what the actors uploaded, from any node
            state = training_state.after_finish(staging.store.uri, kind.state(staging.store, list(results)),
                                                keep_checkpoints, where=kind.state_where)
            commit = Commit(store, staging)
            try:
                metrics = kind.commit(commit, meta, results, tracker, parent)
            except BaseException:
                commit.rollback()
                raise
        except BaseException as e:
            if own_parent:
                tracker.end_run(parent, "FAILED")
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                raise Interrupted(f"{store.uri} is unchanged; run the same {kind.command} again") from e
            raise
        finally:
            staging.remove()
        kind.after_commit(tracker, meta, metrics)
        if own_parent:
            tracker.end_run(parent)
    return RunSummary(store.uri, metrics, results, tracking_footer(tracker, parent, store.uri),
                      time.perf_counter() - start, training_state=state)


def open_tracking(store: RunStore, meta: RunMeta, cfg: TrackingConfig | None, job: str,
                  params: dict[str, Any]) -> tuple[Tracker, str | None, bool]:
    """(tracker, parent run id, whether this job created that parent).

    Default: the run's own tracking URI, experiment and parent run (the new units become more
    children of it), or none if the run was not tracked. Another URI or experiment (or a parent run
    that is gone, or a moved run) gets a new parent run tagged with a link to the old one.
    """
    ml = meta.mlflow or {}
    run_uri, run_parent, run_exp = ml.get("tracking_uri"), ml.get("parent_run_id"), ml.get("experiment_id")
    if (cfg is not None and not cfg.enabled) or (cfg is None and not run_parent):
        # Off when asked, and by default for a run that was trained without tracking.
        return Tracker(default_tracking_uri(store.root), "scalable_xmr", enabled=False), None, False
    uri = (cfg.tracking_uri if cfg else None) or run_uri or default_tracking_uri(store.root)
    uri = absolute_tracking_uri(uri)
    experiment = cfg.experiment if cfg else experiment_name(uri, run_exp) or "scalable_xmr"
    tracker = Tracker(uri, experiment)
    # A moved or copied run never adds children under the parent its original recorded.
    same_place = (uri == run_uri and tracker.experiment_id == run_exp
                  and not recorded_elsewhere(meta, store.uri))
    if run_parent and same_place and tracker.run_is_active(run_parent):
        return tracker, run_parent, False
    elsewhere = recorded_elsewhere(meta, store.uri)
    parent = tracker.start_run(f"{meta.kind}-add:{store.root.name}", tags={
        "job": job, "xmr.run_dir": store.uri,
        **({"xmr.copied_from": elsewhere} if elsewhere else {}),
        "xmr.extends_parent_run_id": str(run_parent), "xmr.extends_tracking_uri": str(run_uri)})
    tracker.log_params(parent, params)
    return tracker, parent, parent is not None
