"""Add modalities to a finished SDML run with one job (SDML §3.2 and Table 7; docs/run-store.md).

P fixes the common space, so a new modality costs only its own autoencoder: the networks already
in the run are never loaded, retrained or re-encoded. The new ordered pairs (new→existing,
existing→new, new→new) are scored from the test embeddings already in the run store.

What the job changes in the run directory, and nothing else:

- it adds ``modalities/<m>/`` for each new modality (trained in a staging folder
  ``<run>/.staging/add-<id>/`` first, then moved into place with one atomic rename);
- it rewrites ``metrics.json`` (old pair values copied as they were, new pairs added, new mean),
  ``plots/`` (regenerated) and, last, ``run.json`` (the commit point).

The new modality's training state (``checkpoints/``) is dropped in the staging folder once its
training has ended, before the commit, unless ``keep_checkpoints``: nothing resumes an add job (a
killed one starts again), so the run never holds it, not even for a moment (and a run on object
storage never uploads it). The run's existing modalities -- their checkpoints too, if the run
kept them -- are never touched; nor are their models needed: the run's checkpoints may be gone.

Every other pre-existing file stays byte-identical (``projection.arrow``, every existing
``modalities/<m>/`` file). ``--replace`` additionally swaps out the replaced modality's folder.

Crash safety: the run's status is never set to "running"; readers list modalities from
``run.json`` only (``RunMeta.finished_modalities``), so a job killed at any point leaves a finished
run, with or without the new modality: a killed training leaves at most ``.staging/`` (ignored,
removed by the next add job); a kill after the rename leaves an unlisted ``modalities/<m>/`` (ignored,
replaced by the next add job) and possibly a ``metrics.json``/``plots/`` already showing the new
pairs (``build_metrics`` keeps only pairs of ``run.json``'s modalities, so the next job heals it).
An *exception* after the rename (disk full, a plotting error) is rolled back: the run is left
byte-identical. ``--replace`` first commits the run without the replaced modality, so a kill
mid-way never leaves ``run.json`` describing one model while the folder holds another.
One add job at a time per run: the job holds an exclusive ``flock`` on the run directory.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scalable_xmr.config import ModalityOverrides, ResourceConfig, SDMLConfig, TrackingConfig, from_dict
from scalable_xmr.data.modality.dataset import open_dataset, read_modality_table
from scalable_xmr.data.modality.table import check_labelled_test
from scalable_xmr.distributed.actors import Outcome
from scalable_xmr.errors import ActorDiedError, InputError, MissingError, RunStateError
from scalable_xmr.io import absolute_uri
from scalable_xmr.runs.session import RunSummary
from scalable_xmr.runs.staging import Commit, run_staged
from scalable_xmr.sdml import evaluate
from scalable_xmr.sdml.job import finish_run, modality_entry
from scalable_xmr.sdml.launch import check_resources, train_modalities
from scalable_xmr.sdml.modality_spec import ModalitySpec, check_split_sizes
from scalable_xmr.sdml.trainer import TrainResult
from scalable_xmr.store.meta import RunMeta, now_iso, versions
from scalable_xmr.store.projection import load_projection
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.runs import recorded_elsewhere
from scalable_xmr.tracking.tracker import Tracker

SPLITS = ("train", "val", "test")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the dataset.json rule for modality names


@dataclass(frozen=True)
class AddRequest:
    """One add-modality job. Hyperparameters default to the run's ``run.json["sdml"]``."""

    run_dir: str
    modalities: tuple[str, ...]
    dataset_uri: str | None = None  # a dataset holding <m>.parquet for every new modality ...
    table_paths: tuple[str, ...] = ()  # ... or loose tables (id, split, labels, features), one per modality
    overrides: ModalityOverrides = ModalityOverrides()  # per-modality changes to the run's SDML config
    resources: ResourceConfig = ResourceConfig()
    tracking: TrackingConfig | None = None  # None: the run's own tracking URI, experiment and parent
    replace: bool = False  # allow retraining a modality the run already has
    show_progress: bool = True
    keep_checkpoints: bool = False  # move the new modalities' checkpoints/ into the run too


@dataclass(frozen=True)
class _Source:
    """Where a new modality's rows come from, after validation."""

    dataset_uri: str | None
    table_path: str | None

    def to_json(self) -> dict[str, str]:
        return {"dataset": self.dataset_uri} if self.dataset_uri else {"table": str(self.table_path)}


def add_modalities(req: AddRequest, address: str | None = None) -> RunSummary:
    """Train ``req.modalities`` against the run's P on one Ray actor each and add them to the run.

    Checks everything it can before writing anything (run state, P's checksum, classes, labels,
    features, names); see the module docstring for exactly what changes in the run directory.
    """
    _check_request(req)
    return run_staged(AddModalities(req), req.run_dir, req.tracking, req.keep_checkpoints, address)


class AddModalities:
    """The add-modality job as :func:`~scalable_xmr.runs.staging.run_staged` runs it."""

    job, command = "add_modality", "add-modality command"
    staged_files = ("projection.arrow",)  # the trainers load P from their run folder
    state_where = "modalities/<new>/checkpoints/"

    def __init__(self, req: AddRequest):
        self.req = req

    def check(self, store: RunStore, meta: RunMeta) -> None:
        req = self.req
        self.n_classes = _check_run(store, meta, req)
        self.base = from_dict(SDMLConfig, meta.sdml, source=f"{store.run_json} 'sdml'")  # the run's settings
        self.configs = _configs(self.base, meta, req)  # resolved once
        self.sources = _sources(store, meta, req, self.configs)
        self.store = store

    def before_ray(self) -> None:
        # each new modality's rate and where it came from, before anything trains (docs/models.md)
        print(self.req.overrides.lr_line(self.base, self.req.modalities), file=sys.stderr, flush=True)

    def check_cluster(self) -> None:
        check_resources(self.req.resources)

    def params(self, meta: RunMeta) -> dict[str, Any]:
        return {"dataset": meta.dataset["name"], "projection_sha256": meta.projection["sha256"], **meta.sdml}

    def specs(self, staging: RunStore, meta: RunMeta) -> list[ModalitySpec]:
        return [ModalitySpec(run_dir=staging.uri, modality=m, config=self.configs[m],
                            dataset_uri=self.sources[m].dataset_uri, table_path=self.sources[m].table_path,
                            n_classes=self.n_classes, projection_sha256=meta.projection["sha256"])
                for m in self.req.modalities]

    def train(self, jobs: list[ModalitySpec]) -> Outcome:
        outcome = train_modalities(jobs, self.req.resources, show_progress=self.req.show_progress)
        if isinstance(outcome.error, ActorDiedError):
            error = RunStateError(f"training of {', '.join(self.req.modalities)} died ({outcome.error}); "
                                  f"the run {self.store.root} is unchanged")
            error.__cause__ = outcome.error
            outcome.error = error
        return outcome

    def state(self, staging: RunStore, units: list[str]) -> list[Path]:
        return [staging.checkpoint_path(m).parent for m in units]

    def commit(self, commit: Commit, meta: RunMeta, results: dict[str, TrainResult], tracker: Tracker,
               parent: str | None) -> evaluate.SDMLMetrics:
        return _commit(commit, meta, results, self.configs, self.sources, tracker, parent)

    def after_commit(self, tracker: Tracker, meta: RunMeta, metrics: evaluate.SDMLMetrics) -> None:
        _log_new_pairs(tracker, meta, metrics, list(self.req.modalities))


# ---- validation (nothing is written before all of it passed) ------------------------------------
def _check_request(req: AddRequest) -> None:
    if not req.modalities:
        raise InputError("give at least one --modality to add")
    for m in req.modalities:
        if not _NAME_RE.match(m):
            raise InputError(f"--modality {m!r}: a modality name must match {_NAME_RE.pattern}")
    dupes = sorted({m for m in req.modalities if req.modalities.count(m) > 1})
    if dupes:
        raise InputError(f"--modality {dupes[0]!r} given more than once")
    req.overrides.lr.check_modalities(req.modalities)
    if (req.dataset_uri is None) == (not req.table_paths):
        raise InputError("give the new modality's data with --data DIR or --table FILE (one of them)")
    if req.table_paths and len(req.table_paths) != len(req.modalities):
        raise InputError(f"{len(req.table_paths)} --table file(s) for {len(req.modalities)} --modality "
                         "name(s): give one --table per --modality, in the same order")


def _check_run(store: RunStore, meta: RunMeta, req: AddRequest) -> int:
    """The run is an SDML run with an intact P and test embeddings; returns its class count."""
    if meta.kind != "sdml":
        raise InputError(f"{store.run_json}: not an SDML run (kind {meta.kind!r})")
    n_classes, proj = int(meta.dataset["n_classes"]), meta.projection
    load_projection(store.projection_path, expected_sha256=proj["sha256"],
                    expected_shape=(int(proj["dim"]), n_classes))
    existing = meta.finished_modalities()
    taken = [m for m in req.modalities if m in meta.modalities]
    if taken and not req.replace:
        raise InputError(f"--modality {taken[0]!r}: the run {store.root} already has this modality "
                         f"(it has: {', '.join(existing)}); pass --replace to retrain it")
    for m in existing:
        if m not in req.modalities and not store.embeddings_path(m, "test").is_file():
            raise MissingError(f"{store.embeddings_path(m, 'test')}: test embeddings of modality {m!r} "
                               "not found; the new pairs are scored from them")
    return n_classes


def _configs(base: SDMLConfig, meta: RunMeta, req: AddRequest) -> dict[str, SDMLConfig]:
    """The run's SDML settings ``base`` with this job's overrides; d must stay P's row count."""
    out = {}
    for m in req.modalities:
        cfg = req.overrides.config_for(base, m)
        if cfg.dim != int(meta.projection["dim"]):
            raise InputError(f"modality {m!r}: dim {cfg.dim} but the run's projection P has "
                             f"{meta.projection['dim']} rows; the common space is fixed by P")
        out[m] = cfg
    return out


def _sources(store: RunStore, meta: RunMeta, req: AddRequest,
             configs: dict[str, SDMLConfig]) -> dict[str, _Source]:
    """Read and check every new modality's splits against the run (classes, labels, features)."""
    n_classes, multi_label = int(meta.dataset["n_classes"]), bool(meta.dataset["multi_label"])
    out = {}
    if req.dataset_uri is not None:
        uri = absolute_uri(req.dataset_uri)
        ds = open_dataset(uri, validate=False)
        _check_classes(ds.info.n_classes, ds.info.class_names, f"{uri}/dataset.json", store, meta)
        for m in req.modalities:
            if m not in ds.modalities:
                raise InputError(f"--modality {m!r}: not in dataset {uri} "
                                 f"(it has: {', '.join(ds.modalities)})")
            splits = {s: ds.read_split(m, s) for s in SPLITS}  # checks dims, labels, NaN/inf, ids
            _check_splits(m, splits, ds.table_path(m), multi_label, configs[m])
            out[m] = _Source(uri, None)
        return out
    for m, path in zip(req.modalities, req.table_paths, strict=True):
        path = absolute_uri(path)
        # Labels are class indices of the run (a loose table has no class names to compare).
        splits = read_modality_table(path, n_classes=n_classes, multi_label=multi_label)
        _check_splits(m, splits, path, multi_label, configs[m])
        out[m] = _Source(None, path)
    return out


def _check_classes(n: int, names, source: str, store: RunStore, meta: RunMeta) -> None:
    run_n, run_names = int(meta.dataset["n_classes"]), meta.dataset.get("class_names")
    if n != run_n:
        raise InputError(f"{source}: {n} classes, but the run {store.root} has {run_n}: a new modality "
                         "must use the run's classes")
    if run_names is not None and list(names) != list(run_names):
        i = next(i for i, (a, b) in enumerate(zip(names, run_names, strict=True)) if a != b)
        raise InputError(f"{source}: class names differ from the run's at index {i}: {names[i]!r} here, "
                         f"{run_names[i]!r} in {store.run_json}")


def _check_splits(modality: str, splits: dict, where: str, multi_label: bool, cfg: SDMLConfig) -> None:
    if not multi_label:
        for s, data in splits.items():
            counts = data.labels.sum(axis=1)  # (n,)
            if (counts > 1).any():
                i = int(np.flatnonzero(counts > 1)[0])
                raise InputError(f"{where}: row id {data.ids[i]!r} ({s}) has {int(counts[i])} labels but "
                                 "the run is single-label")
    check_split_sizes(modality, {s: len(d) for s, d in splits.items()}, cfg.batch_size, where)
    check_labelled_test(int((splits["test"].labels.sum(axis=1) > 0).sum()), where)


# ---- the commit ---------------------------------------------------------------------------------
def _commit(commit: Commit, meta: RunMeta, results: dict[str, TrainResult],
            configs: dict[str, SDMLConfig], sources: dict[str, _Source], tracker: Tracker,
            parent: str | None) -> evaluate.SDMLMetrics:
    """Move the trained folders in, then metrics.json and plots, then run.json (the commit point)."""
    store, staging = commit.store, commit.staging.store
    replaced = [m for m in results if m in meta.modalities]
    if replaced:
        _commit_without(store, meta, replaced)
    for m in results:
        for f in ("model.pt", "train_log.json", "embeddings/val.parquet", "embeddings/test.parquet"):
            assert (staging.modality_dir(m) / f).is_file(), f"trainer wrote no {f} for {m}"
        commit.move_in(staging.modality_dir(m), store.modality_dir(m))
        meta.modalities[m] = {**modality_entry(results[m]), "config": configs[m].to_dict(),
                                 "source": sources[m].to_json(), "added": now_iso()}
    meta.additions = [*(meta.additions or []), {
        "modalities": list(results), "replaced": replaced, "at": now_iso(),
        "mlflow_parent_run_id": parent, "versions": versions()}]
    if parent and recorded_elsewhere(meta, store.uri):  # a moved or copied run adopts its own parent
        meta.mlflow = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                       "parent_run_id": parent, "run_dir": store.uri}
    old = evaluate.SDMLMetrics.read(store)
    old_at_k = old.map_at_k if old else None  # keep reporting the run's mAP@k
    return finish_run(store, meta, new_modalities=list(results), tracker=tracker, parent_run=parent,
                      results=results, top_k=old_at_k.k if old_at_k else None,
                      no_relevant=old_at_k.no_relevant if old_at_k else "zero")


def _commit_without(store: RunStore, meta: RunMeta, dropped: list[str]) -> None:
    """Commit the run minus ``dropped`` (consistent metrics.json, then run.json) before a replace."""
    keep = [m for m in meta.finished_modalities() if m not in dropped]
    old = evaluate.SDMLMetrics.read(store)
    pairs = [evaluate.pair_key(q, t) for q, t in evaluate.all_pairs(keep)]
    maps, at_k, n_test = (old.map, old.map_at_k, old.n_test or {}) if old else ({}, None, {})
    if all(k in maps and (not at_k or k in at_k.maps) for k in pairs):
        evaluate.build_metrics(
            {k: maps[k] for k in pairs}, keep,
            {k: at_k.maps[k] for k in pairs} if at_k else None, at_k.k if at_k else None,
            {m: n for m, n in n_test.items() if m in keep} or None,
            no_relevant=at_k.no_relevant if at_k else "zero").write(store)
    for m in dropped:
        meta.modalities.pop(m)
    store.write(meta)


# ---- MLflow -------------------------------------------------------------------------------------
def _log_new_pairs(tracker: Tracker, meta: RunMeta, metrics: evaluate.SDMLMetrics, new: list[str]) -> None:
    """Each new modality's child run also gets the mAP of the pairs it is part of."""
    for m in new:
        child = meta.modalities[m].get("mlflow_run_id")
        pairs = evaluate.pairs_involving([m], metrics.modalities)
        tracker.log_metrics(child, {f"map/{evaluate.pair_key(q, t)}": metrics.map[evaluate.pair_key(q, t)]
                                    for q, t in pairs})
