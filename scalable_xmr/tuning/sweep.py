"""``run_sweep``: a Ray Tune sweep from request to ``best.json``, tracked in MLflow.

The sweep directory ``<storage>/<name>/`` is Tune's experiment directory and ours:

```
sweep.json          request, search space, dataset, P, MLflow ids, status (running/interrupted/finished)
projection.arrow    SDML: the one P every trial reads (written once)
trials/<trial_id>/  each trial's own run directory: model.pt, embeddings, starts.jsonl
trials/<trial_id>-m<i>/  with --population: slot i's model, embeddings and log (the population's
                    checkpoints stay in trials/<trial_id>/); every slot is a row and an MLflow run
best.json           the best configuration (per modality for SDML), for `--config best.json`, and
                    its test figures: trials select on val only; the chosen configuration is
                    scored on test once, at the end (final_score.py); `schedule`: the trials' and
                    the training job's (a branch trial runs its model's schedule compressed into
                    --epochs, branch.config.compressed; best.json trains the full one)
summary.md          the table of the top trials and those lines; plots/ the metric per hyperparameter
mlflow_runs.json    trial id -> MLflow child run id
tuner.pkl, experiment_state-*.json, <trainable>_<id>...   Tune's own (resume, results, checkpoints)
```

A trial's training state lives once, in Tune's checkpoint folders (trial_io.report), until the sweep
finishes: then it goes (trial_io.drop_sweep_state), after sweep.json says finished; the selected
models stay. An interrupted sweep keeps it all, for --resume.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scalable_xmr.tuning.results as res
from scalable_xmr import sweep_best
from scalable_xmr.distributed.cluster import can_autoscale, connect, describe_cluster
from scalable_xmr.errors import InputError, MissingError, RunStateError
from scalable_xmr.io import atomic_write_json, atomic_write_text, check_writable, fileops, read_json
from scalable_xmr.store.meta import now_iso, versions
from scalable_xmr.store.remote import open_dir, pull_path, uri_of
from scalable_xmr.tracking.tracker import Tracker, default_tracking_uri
from scalable_xmr.tuning.console import TrialLines, set_console, tune_callbacks, tune_console
from scalable_xmr.tuning.final_score import TEST_LABEL
from scalable_xmr.tuning.request import SweepRequest, backend_for, check_base, check_request
from scalable_xmr.tuning.scheduler import make_scheduler
from scalable_xmr.tuning.space import build_space
from scalable_xmr.tuning.tracking import SweepTracking
from scalable_xmr.tuning.trial_io import drop_sweep_state
from scalable_xmr.tuning.trial_workers import (
    ReleaseTrainGroups,
    TrialWorkers,
    cluster_trial_workers,
    workers_line,
)

SWEEP_FILE = "sweep.json"
BEST_FILE = sweep_best.BEST_FILE


@dataclass
class SweepSummary:
    sweep_dir: str
    n_trials: int
    finished: bool  # False: interrupted, resume with --resume
    best: dict[str, Any] | None
    best_path: str | None
    table: str
    plots: list[str]
    tracking: str
    seconds: float
    trials: list[res.TrialRow] = field(default_factory=list)  # every trial's config and last result
    test_line: str = ""  # the chosen configuration's test figures, scored once (final_score.py)


def _latest_sweep(storage: Path, model: str) -> Path:
    candidates = sorted((p.parent for p in storage.glob(f"*/{SWEEP_FILE}")
                         if read_json(p).get("model") == model), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise MissingError(f"--resume: no {model} sweep to resume in {storage}")
    return candidates[-1]


def sweep_dir_for(req: SweepRequest) -> Path:
    # --storage s3://bucket/sweeps: our files go through its local mirror (store/remote.py), and
    # Tune's own (tuner.pkl, experiment state, trial checkpoints) to the bucket through uri_of.
    storage = open_dir(req.storage, "--storage")
    if req.name:
        if "/" in req.name or req.name in (".", ".."):
            raise InputError(f"--name must be a plain directory name, got {req.name!r}")
        return storage / req.name
    if req.resume:
        return _latest_sweep(storage, req.model)
    return storage / f"{req.model}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _gpus_per_trial(req: SweepRequest) -> float:
    import ray

    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if req.gpus_per_trial is None:
        return 1.0 if has_gpus else 0.0
    if req.gpus_per_trial > 0 and not has_gpus:

        if not can_autoscale():
            raise InputError(f"--gpus-per-trial {req.gpus_per_trial:g} but this Ray cluster has no "
                             f"GPUs ({describe_cluster()}); use 0 to run trials on CPUs")
    return float(req.gpus_per_trial)


def _resumable(req: SweepRequest, sweep_dir: Path) -> dict[str, Any]:
    """sweep.json of the sweep to resume, or MissingError (checked before Ray starts)."""
    from ray.tune import Tuner

    if not (sweep_dir / SWEEP_FILE).is_file() or not Tuner.can_restore(uri_of(sweep_dir)):
        raise MissingError(f"--resume: no sweep to resume at {sweep_dir} (no {SWEEP_FILE} / tuner.pkl)")
    meta = read_json(sweep_dir / SWEEP_FILE)
    if meta.get("model") != req.model:
        raise InputError(f"--resume: {sweep_dir} is a {meta.get('model')} sweep, not {req.model}")
    return meta


def _check_new(sweep_dir: Path) -> None:
    from ray.tune import Tuner

    if (sweep_dir / SWEEP_FILE).exists() or Tuner.can_restore(uri_of(sweep_dir)):
        raise RunStateError(f"{sweep_dir}: already holds a sweep; pass --resume to continue it or "
                            "choose another --name")


def _open_sweep(req: SweepRequest, sweep_dir: Path, backend, checked: Any,
                workers: TrialWorkers | None) -> dict[str, Any]:
    """Read sweep.json of a sweep to resume, or create the sweep directory and its sweep.json."""
    if req.resume:
        return _resumable(req, sweep_dir)
    _check_new(sweep_dir)
    space = build_space(req.model, req.grids, req.ranges)
    metric_key, mode = backend.metrics[req.metric or backend.default_metric]
    gpus = 0.0 if workers else _gpus_per_trial(req)  # W > 1: the workers hold the GPUs, not the trial
    created = not sweep_dir.exists()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": 1, "model": req.model, "name": sweep_dir.name, "status": "running",
        "created": now_iso(), "metric": metric_key, "mode": mode, "epochs": req.epochs,
        "num_samples": req.num_samples, "scheduler": req.scheduler,
        "max_concurrent": req.max_concurrent, "gpus_per_trial": gpus,
        "cpus_per_trial": req.cpus_per_trial, "seed": req.seed, "space": space.to_json(),
        "tuned": sorted(space.tuned()), "swept": space.swept(), "in_trial": space.in_trial(),
        "log_params": sorted(k for k, d in space.tuned().items() if d.log), "versions": versions(),
    }
    if workers:  # Train inside Tune (trial_workers.py): as many trials at once as the cluster holds
        meta.update(workers_per_modality=workers.workers, gpus_per_worker=workers.per_worker.get("GPU", 0.0),
                    max_concurrent=workers.concurrent, trial_workers=workers.to_json())
    try:
        meta.update(backend.prepare(req, sweep_dir, space, checked))
    except BaseException:
        if created:  # leave no half-made sweep behind (a bad dataset, --set value ...)
            fileops.remove(sweep_dir)
        raise
    meta["n_configurations"] = space.check_nonempty(req.num_samples, backend.n_groups(meta))
    # Tune trials: one per configuration, or one per (group, population) with --population.
    meta["n_trials"] = (backend.n_groups(meta) * len(meta["populations"]) if meta.get("populations")
                        else meta["n_configurations"])
    meta["param_space_json"] = {k: d.to_json() for k, d in space.tuned().items()}
    atomic_write_json(sweep_dir / SWEEP_FILE, meta)
    return meta


def _fixed(meta: dict[str, Any]) -> dict[str, Any]:
    """The base configuration values that no trial overrides."""
    base = {**(meta.get("base") or {}), **(meta.get("trainer_base") or {}), **(meta.get("model_base") or {})}
    return {k: v for k, v in base.items() if k not in meta["tuned"] and v is not None}


def _tracker(req: SweepRequest, meta: dict[str, Any], sweep_dir: Path) -> tuple[Tracker, str | None]:
    """The sweep's parent MLflow run: created on the first run, found again on --resume."""
    old = meta.get("mlflow") or {}
    uri = old.get("tracking_uri") or req.tracking.tracking_uri or default_tracking_uri(sweep_dir)
    tracker = Tracker(uri, old.get("experiment") or req.tracking.experiment, req.tracking.enabled)
    parent = old.get("parent_run_id")
    if parent is None and tracker.enabled:
        parent = tracker.start_run(f"sweep:{meta['name']}", tags={"job": "sweep", "model": meta["model"]})
        params = {k: meta[k] for k in ("model", "metric", "mode", "epochs", "schedule", "num_samples",
                                       "scheduler", "max_concurrent", "gpus_per_trial", "cpus_per_trial",
                                       "seed")}
        params.update({k: meta[k] for k in ("population", "workers_per_modality", "gpus_per_worker")
                       if k in meta})
        params.update({f"space.{k}": v for k, v in meta["param_space_json"].items()})
        params.update({f"in_trial.{k}": v for k, v in meta["in_trial"].items()})
        params.update({f"base.{k}": v for k, v in _fixed(meta).items()})
        if "dataset" in meta:
            params["dataset"] = meta["dataset"]["name"]
        if "projection" in meta:
            params["projection_sha256"] = meta["projection"]["sha256"]
        tracker.log_params(parent, params)
        meta["mlflow"] = {"tracking_uri": tracker.uri, "experiment": req.tracking.experiment,
                          "experiment_id": tracker.experiment_id, "parent_run_id": parent}
        atomic_write_json(sweep_dir / SWEEP_FILE, meta)
    return tracker, parent


def _tuner(req: SweepRequest, meta: dict[str, Any], sweep_dir: Path, backend, callbacks: list,
           lines: TrialLines | None):
    """The sweep's Tuner, and whether its callbacks are :func:`console.tune_callbacks`'."""
    from ray import tune

    trainable = backend.trainable(meta, sweep_dir)
    if req.resume:  # param space, scheduler, callbacks come back from tuner.pkl; the console is ours
        tuner = tune.Tuner.restore(uri_of(sweep_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        return tuner, set_console(tuner, req.verbose, lines)
    space = build_space(meta["model"], req.grids, req.ranges)
    scheduler = make_scheduler(meta["scheduler"], meta["max_iterations"], backend.group_key)
    return tune.Tuner(
        trainable,
        param_space=backend.param_space(space.tune_space(), meta),
        tune_config=tune.TuneConfig(metric=meta["metric"], mode=meta["mode"], scheduler=scheduler,
                                    # population: every configuration is in the grid already
                                    num_samples=1 if meta.get("populations") else meta["num_samples"],
                                    max_concurrent_trials=meta["max_concurrent"],
                                    # a data-parallel trial's actor holds no data, and must end
                                    # (with its TorchTrainer) when the scheduler stops the trial
                                    reuse_actors="trial_workers" not in meta),
        run_config=tune.RunConfig(
            name=sweep_dir.name, storage_path=uri_of(sweep_dir.parent),
            callbacks=tune_callbacks(callbacks, lines),
            failure_config=tune.FailureConfig(max_failures=req.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=req.verbose),
    ), True


def fit_noting_ctrl_c(tuner) -> tuple[Any, bool]:
    """``tuner.fit()`` and whether Ctrl-C (SIGINT) stopped it.

    Tune (ray/tune/tune.py ``_setup_signal_catching``, Ray 2.60) replaces the SIGINT handler for
    the run, and puts the previous one back only when SIGINT arrives; its result grid then lists
    the trials it stopped as terminated, like finished ones. So: install a handler of our own
    (behaving as Python's default), see after the run whether Tune handed it back, and restore the
    handler from before either way (else Tune's would swallow a later Ctrl-C of this process).
    """
    in_main = (threading.current_thread() is threading.main_thread()
               and not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")))  # Tune's own switch
    before = signal.getsignal(signal.SIGINT) if in_main else None

    def ours(signum, frame):
        raise KeyboardInterrupt

    if in_main:
        signal.signal(signal.SIGINT, ours)
    try:
        grid = tuner.fit()
        return grid, in_main and signal.getsignal(signal.SIGINT) is ours
    finally:
        if in_main:
            signal.signal(signal.SIGINT, before)


def run_sweep(req: SweepRequest, address: str | None = None, callbacks: tuple = ()) -> SweepSummary:
    """Run (or, with ``req.resume``, continue) a sweep; returns where everything went.

    ``callbacks``: extra Tune callbacks (they are stored in tuner.pkl with the sweep's own and come
    back on resume).
    """
    start = time.perf_counter()
    check_request(req)
    sweep_dir = sweep_dir_for(req)
    if req.resume:  # a missing sweep fails before Ray starts
        _resumable(req, sweep_dir)
    else:  # and so do a bad --grid / --range / --num-samples / --set, or a name already taken
        space = build_space(req.model, req.grids, req.ranges)
        space.check_nonempty(req.num_samples)
        check_base(req, space)
        _check_new(sweep_dir)
    backend = backend_for(req.model)
    # the dataset and its modalities / splits, before Ray starts too; prepare() takes what it read
    checked = None if req.resume else backend.check(req)
    check_writable(sweep_dir, "--storage")
    connect(address)
    workers = None if req.resume else cluster_trial_workers(req)  # W > 1 that cannot fit: before any write
    meta = _open_sweep(req, sweep_dir, backend, checked, workers)
    if "trial_workers" in meta:  # the start line says W per modality and the trials at a time
        print(workers_line(TrialWorkers.from_json(meta["trial_workers"]), meta["modalities"],
                           describe_cluster()), file=sys.stderr, flush=True)
    meta.setdefault("schedule", backend.schedule(meta))  # what every trial runs, in words
    tracker, parent = _tracker(req, meta, sweep_dir)
    experiment = meta.get("mlflow", {}).get("experiment", req.tracking.experiment)
    fixed = {"model": meta["model"], "schedule": meta["schedule"],
             **{k: meta[k] for k in ("workers_per_modality",) if k in meta},
             **{f"base.{k}": v for k, v in _fixed(meta).items()}}
    mlflow_cb = SweepTracking(tracker.uri, experiment, parent, str(sweep_dir), fixed, tracker.enabled)
    meta["status"] = "running"
    atomic_write_json(sweep_dir / SWEEP_FILE, meta)
    lines = TrialLines(meta["n_trials"], meta["tuned"], meta["metric"], meta.get("max_iterations"),
                       backend.group_key) if req.trial_lines else None
    try:
        # W > 1: the Train workers' placement group of a trial Tune has ended goes (trial_workers.py)
        released = [ReleaseTrainGroups()] if "trial_workers" in meta else []
        tuner, own_loggers = _tuner(req, meta, sweep_dir, backend, [mlflow_cb, *released, *callbacks], lines)
        with tune_console(req.verbose, own_loggers):
            grid, interrupted = fit_noting_ctrl_c(tuner)
        rows = res.rows_from_results(grid, backend.group_key)
        pull_path(sweep_dir)  # --storage on object storage: what trials on other nodes uploaded
        # Interrupted: Ctrl-C (Tune then reports the trials it stopped as terminated), a trial
        # still running/paused, or (trials are created lazily under max_concurrent) fewer trials
        # than the space holds.
        finished = not interrupted and grid.num_terminated + grid.num_errors >= len(grid) >= meta["n_trials"]
        if not finished:
            meta["status"] = "interrupted"
            atomic_write_json(sweep_dir / SWEEP_FILE, meta)
            return SweepSummary(str(sweep_dir), len(rows), False, None, None, "", [],
                                tracker.run_url(parent), time.perf_counter() - start, rows)
        summary = _finish(meta, sweep_dir, backend, rows, tracker, parent)
    except BaseException as e:
        meta["status"], meta["error"] = "failed", f"{type(e).__name__}: {e}"
        atomic_write_json(sweep_dir / SWEEP_FILE, meta)
        tracker.end_run(parent, "FAILED")
        raise
    try:  # finished: the trials' training state goes (a failure leaves the sweep finished)
        drop_sweep_state(sweep_dir)
    except OSError as e:
        warnings.warn(f"{sweep_dir}: the sweep is finished but its trials' checkpoints could not all be "
                      f"removed ({e}); what is left can be deleted by hand", stacklevel=2)
    summary.seconds = time.perf_counter() - start
    return summary


def schedule_line(best: dict[str, Any]) -> str:
    """Which schedule the trials ran and which one training with ``best`` (best.json) runs."""
    schedule = best["schedule"]
    return f"Schedule: trials ran {schedule['trials']}; training with best.json runs {schedule['final']}."


def _finish(meta: dict[str, Any], sweep_dir: Path, backend, rows: list[res.TrialRow], tracker: Tracker,
            parent: str | None) -> SweepSummary:
    """best.json, the summary table and plots, MLflow artifacts; marks the sweep finished.

    The best trials are chosen on the validation metric alone; ``backend.best_json`` then scores
    that choice on test, once (final_score.py), and only the parent run gets those figures.
    """
    metric, mode = meta["metric"], meta["mode"]
    best = res.best_per_group(rows, metric, mode, prefer=backend.complete_key)
    chosen = sweep_best.SweepBest.from_json(
        {**backend.best_json(best, meta, sweep_dir, meta["tuned"]), "sweep": meta["name"], "metric": metric,
         "mode": mode, "epochs": meta["epochs"], "n_trials": len(rows), "created": now_iso()},
        str(sweep_dir / BEST_FILE))
    chosen.write(sweep_dir)
    best_json = chosen.to_json()
    table = res.top_table(rows, metric, mode, meta["tuned"], extra=backend.table_extra,
                          schedule=meta["schedule"])
    test_line = backend.summary_line(best_json)
    atomic_write_text(sweep_dir / "summary.md", f"# Sweep {meta['name']} ({meta['model']})\n\n"
                      f"Trials ranked by validation {metric}.\n\n{table}\n\n"
                      f"{schedule_line(best_json)}\n\n{test_line}\n")
    plot = res.plot_metric_vs_params(
        rows, meta["swept"], metric, mode, sweep_dir / "plots" / f"{metric}_vs_hyperparameters.png",
        set(meta["log_params"]), f"{meta['model']} sweep {meta['name']}: {metric} per trial",
        full_epochs=meta.get("max_iterations"))
    plots = [str(plot)] if plot else []
    tracker.log_metrics(parent, backend.parent_metrics(best_json))
    tracker.log_params(parent, {"test_figures": TEST_LABEL})
    for path in [sweep_dir / BEST_FILE, sweep_dir / "summary.md", sweep_dir / SWEEP_FILE, *plots]:
        tracker.log_artifact(parent, path)
    tracker.end_run(parent)
    # n_trials counts Tune trials; with --population each holds several configurations (rows).
    meta.update(status="finished", finished=now_iso(),
                **({"n_configurations": len(rows)} if meta.get("populations") else {"n_trials": len(rows)}))
    meta.pop("error", None)
    atomic_write_json(sweep_dir / SWEEP_FILE, meta)
    return SweepSummary(str(sweep_dir), len(rows), True, best_json, str(sweep_dir / BEST_FILE), table,
                        plots, tracker.run_url(parent), 0.0, rows, test_line)


__all__ = ["SweepRequest", "SweepSummary", "run_sweep", "schedule_line", "sweep_dir_for"]
