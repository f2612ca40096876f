"""The SDML job as a library function: data → P → parallel training → evaluation → tracking.

``train_sdml`` is what ``jobs/train_xmedia.py`` and ``xmr train`` call. The same finishing steps
(evaluate from stored embeddings, plots, metrics.json, MLflow) serve the add-a-modality job.

Training state: once the run is finished (``run.json`` written with status finished), the job
removes every modality's ``checkpoints/`` (and the joint strategy's optimizer state) unless
``keep_checkpoints`` (``store.training_state.after_finish``). Finished first, then removed: a job killed in
between leaves a finished run that still holds some state, which nothing reads (a finished run is
never resumed). A failed or interrupted run keeps all of it -- also that of its finished
modalities, which ``--resume`` skips: it goes with the rest when the run finishes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalable_xmr.config import ModalityOverrides, ResourceConfig, SDMLConfig, TrackingConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.distributed.actors import Outcome
from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval import (
    PAPER_SCOPES,
    check_no_relevant,
    precision_recall_curve,
    precision_scope_curve,
)
from scalable_xmr.io import absolute_uri, read_json
from scalable_xmr.runs.session import RunRecords, RunSummary, SessionOptions, run_session
from scalable_xmr.sdml import evaluate
from scalable_xmr.sdml.joint import JOINT_CHECKPOINT
from scalable_xmr.sdml.launch import check_resources, train_modalities
from scalable_xmr.sdml.modality_spec import ModalitySpec, check_split_sizes
from scalable_xmr.sdml.trainer import TrainResult
from scalable_xmr.store.meta import RunMeta, now_iso
from scalable_xmr.store.projection import create_projection, load_projection, save_projection
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker


@dataclass(frozen=True)
class TrainRequest:
    run_dir: str
    dataset_uri: str
    sdml: SDMLConfig = SDMLConfig()
    modalities: tuple[str, ...] | None = None  # None: every modality of the dataset
    overrides: ModalityOverrides = ModalityOverrides()  # best.json's per-modality configs, --lr flags
    resources: ResourceConfig = ResourceConfig()
    tracking: TrackingConfig = TrackingConfig()
    projection_file: str | None = None  # reuse an existing P instead of creating one
    projection_seed: int = 0
    resume: bool = False
    overwrite: bool = False
    top_k: int | None = None  # also report mAP@k
    top_k_no_relevant: str = "zero"  # mAP@k, a query with no relevant item in its top k: "zero" | "skip"
    show_progress: bool = True
    keep_checkpoints: bool = False  # keep every modality's checkpoints/ once the run is finished


TrainSummary = RunSummary  # the name this job's callers know


def train_sdml(req: TrainRequest, address: str | None = None) -> RunSummary:
    """Train ``req``'s modalities (each in its own Ray actor) on the run ``req.run_dir``."""
    check_no_relevant(req.top_k_no_relevant, "top_k_no_relevant")
    kind = SDMLRun(req)
    return run_session(kind, kind.modalities, SessionOptions.of(req), address)


def _log_stored(tracker: Tracker, parent: str | None, store: RunStore, meta: RunMeta,
                metrics: evaluate.SDMLMetrics, results: dict[str, TrainResult]) -> None:
    plots = sorted(p for p in store.plots_dir.glob("*.png")) if store.plots_dir.is_dir() else []
    _log_results(tracker, parent, store, meta, metrics, results, plots)


def _state(store: RunStore, meta: RunMeta) -> tuple[list[Path], list[Path]]:
    return state_dirs(store, meta), [store.root / JOINT_CHECKPOINT]


# SDML's units are the run's modalities (run.json ``modalities``; docs/run-store.md).
RECORDS = RunRecords(kind="sdml", job="train_xmedia", where="modalities/*/checkpoints/",
                     units=lambda meta: meta.modalities if meta.modalities is not None else {},
                     entry=lambda result: modality_entry(result),
                     stored_results=lambda store, meta: stored_results(store, meta),
                     params=lambda meta: _run_params(meta), log_results=_log_stored, state=_state,
                     read_metrics=evaluate.SDMLMetrics.read)


class SDMLRun:
    """One ``xmr train`` job's modalities, checked once at the door (the dataset opened once)."""

    records = RECORDS

    def __init__(self, req: TrainRequest):
        self.req = req
        self.ds = ds = open_dataset(req.dataset_uri)
        self.modalities = list(req.modalities or ds.modalities)
        missing = [m for m in self.modalities if m not in ds.modalities]
        if missing:
            raise InputError(
                f"modality {missing[0]!r} not in dataset {req.dataset_uri} "
                f"(it has: {', '.join(ds.modalities)})"
            )
        req.overrides.lr.check_modalities(self.modalities, req.dataset_uri, ds.modalities)
        self.configs = {m: req.overrides.config_for(req.sdml, m) for m in self.modalities}  # resolved once
        sizes = ds.split_sizes()  # every modality can train before any actor starts
        workers = req.resources.workers_per_modality
        for m in self.modalities:
            check_split_sizes(m, sizes[m], self.configs[m].batch_size, ds.table_path(m))
            if workers > self.configs[m].batch_size:
                raise InputError(f"--workers-per-modality {workers}: modality {m!r} has batch size "
                                 f"{self.configs[m].batch_size}, and each worker takes a slice of every "
                                 f"batch; use at most {self.configs[m].batch_size} workers or a larger "
                                 "--batch-size")

    def check_resume(self, store: RunStore, stored: RunMeta) -> None:
        """The stored run continues with this dataset and each started modality's settings."""
        ds = self.ds
        if stored.kind != "sdml":
            raise InputError(f"{store.root}: a {stored.kind!r} run, not an SDML run")
        n_classes = ds.info.n_classes
        if stored.dataset["n_classes"] != n_classes or stored.dataset["name"] != ds.info.name:
            raise InputError(
                f"{store.root}: run was trained on dataset {stored.dataset['name']!r} "
                f"({stored.dataset['n_classes']} classes), not {ds.info.name!r} ({n_classes})"
            )
        load_projection(store.projection_path, expected_sha256=stored.projection["sha256"])
        # A modality that started training continues only with the configuration it started with.
        for m in self.modalities:
            entry = stored.modalities.get(m, {})
            if entry.get("status") == "finished" or "config" not in entry:
                continue  # finished modalities are not retrained; unstarted ones take the new flags
            workers = self.req.resources.workers_per_modality
            if entry.get("workers", 1) != workers:  # its checkpoints are where that many workers keep them
                raise InputError(
                    f"{store.run_json}: modality {m!r} started training with --workers-per-modality "
                    f"{entry.get('workers', 1)}, --resume asks for {workers}; resume with "
                    f"--workers-per-modality {entry.get('workers', 1)} or pass --overwrite to train again")
            stream = self.req.resources.stream
            if entry.get("stream", False) != stream:  # its checkpoints hold another kind of epoch
                was = "with" if entry.get("stream", False) else "without"
                raise InputError(
                    f"{store.run_json}: modality {m!r} started training {was} --stream, --resume asks "
                    f"{'with' if stream else 'without'} it; resume as it started or pass --overwrite "
                    "to train again")
            old, new = entry["config"], self.configs[m].to_dict()
            for key, value in new.items():
                if old.get(key) != value:
                    raise InputError(
                        f"{store.run_json}: modality {m!r} started training with {key}={old.get(key)!r}, "
                        f"--resume asks for {key}={value!r}; resume with the run's settings or pass "
                        "--overwrite to train again"
                    )

    def params(self, meta: RunMeta) -> dict[str, Any]:
        resources = self.req.resources
        return {**_run_params(meta), "gpus_per_modality": resources.gpus_per_modality,
                "workers_per_modality": resources.workers_per_modality, "stream": resources.stream}

    def before_ray(self, todo: Sequence[str]) -> None:
        # each rate and where it came from, before anything trains (docs/models.md)
        print(self.req.overrides.lr_line(self.req.sdml, todo), file=sys.stderr, flush=True)

    def check_cluster(self) -> None:
        check_resources(self.req.resources)

    def new_meta(self, store: RunStore) -> RunMeta:
        req, ds = self.req, self.ds
        n_classes = ds.info.n_classes
        if req.projection_file is not None:
            P = load_projection(req.projection_file)
            if P.shape[1] != n_classes:
                raise InputError(
                    f"{req.projection_file}: projection has n_classes {P.shape[1]}, the dataset "
                    f"{ds.info.name!r} has {n_classes}"
                )
            seed = None
        else:
            P, seed = create_projection(req.sdml.dim, n_classes, req.projection_seed), req.projection_seed
        if P.shape[0] != req.sdml.dim:
            raise InputError(f"projection has dim {P.shape[0]} but --dim is {req.sdml.dim}")
        store.root.mkdir(parents=True, exist_ok=True)
        digest = save_projection(store.projection_path, P, seed=seed)
        return RunMeta(
            kind="sdml",
            dataset={"uri": absolute_uri(req.dataset_uri), "name": ds.info.name, "n_classes": n_classes,
                     "multi_label": ds.info.multi_label, "class_names": list(ds.info.class_names)},
            projection={"file": "projection.arrow", "sha256": digest, "dim": int(P.shape[0]),
                        "n_classes": int(P.shape[1]), "seed": seed},
            sdml=req.sdml.to_dict(),
            strategy=req.resources.strategy,
            modalities={m: {"status": "pending"} for m in self.modalities},
        )

    def reopen(self, meta: RunMeta) -> None:
        for m in self.modalities:
            meta.modalities.setdefault(m, {"status": "pending"})

    def specs(self, store: RunStore, meta: RunMeta, todo: Sequence[str]) -> list[ModalitySpec]:
        for m in todo:  # what check_resume compares when this run is resumed
            meta.modalities[m]["config"] = self.configs[m].to_dict()
            meta.modalities[m]["workers"] = self.req.resources.workers_per_modality
            meta.modalities[m]["stream"] = self.req.resources.stream
        return [modality_spec(store, meta, m, self.configs[m]) for m in todo]

    def train(self, jobs: list[ModalitySpec]) -> Outcome:
        return train_modalities(jobs, self.req.resources, show_progress=self.req.show_progress)

    def finish(self, store: RunStore, meta: RunMeta, results: dict[str, TrainResult], new: Sequence[str],
               tracker: Tracker, parent: str | None) -> evaluate.SDMLMetrics:
        # The modalities this job trained get their MLflow child runs (earlier ones have theirs).
        return finish_run(store, meta, new_modalities=list(new), tracker=tracker, parent_run=parent,
                          results={m: results[m] for m in new}, top_k=self.req.top_k,
                          no_relevant=self.req.top_k_no_relevant)


def state_dirs(store: RunStore, meta: RunMeta) -> list[Path]:
    """The checkpoints/ folders of the run's modalities."""
    return [store.checkpoint_path(m).parent for m in meta.modalities or {}]


def modality_spec(store: RunStore, meta: RunMeta, modality: str, cfg: SDMLConfig,
                 table_path: str | None = None) -> ModalitySpec:
    """What the actor training ``modality`` of the run gets: paths and its config."""
    return ModalitySpec(
        run_dir=store.uri, modality=modality, config=cfg,  # a URI: actors open their own mirror
        dataset_uri=None if table_path else meta.dataset["uri"], table_path=table_path,
        n_classes=int(meta.dataset["n_classes"]), projection_sha256=meta.projection["sha256"],
    )


def modality_entry(result: TrainResult) -> dict[str, Any]:
    """run.json's record of a finished modality (shared with the add-modality job); with
    patience, also ``patience`` and ``stopped_early`` (the epoch it stopped at, or null)."""
    early = {} if result.patience is None else {"patience": result.patience,
                                                 "stopped_early": result.stopped_early}
    return {"status": "finished", "best_epoch": result.best_epoch,
            "best_val_label": result.best_val_label, "epochs": result.epochs, **early,
            "resumed_at_epoch": result.resumed_at_epoch, "train_seconds": result.train_seconds,
            "device": result.device, "finished": now_iso()}


def _run_params(meta: RunMeta) -> dict[str, Any]:
    # The parent's `lr` lists the rate each modality actually trains with (one value when all
    # agree); each child run also records its own. Read from run.json, so a stored run logs alike.
    rates = {m: (meta.modalities[m].get("config") or meta.sdml).get("lr") for m in meta.modalities}
    lr = next(iter(rates.values())) if len(set(rates.values())) == 1 else ",".join(
        f"{m}={r:g}" for m, r in rates.items())
    return {"dataset": meta.dataset["name"], "projection_sha256": meta.projection["sha256"],
            "strategy": meta.strategy, "modalities": ",".join(meta.modalities), **meta.sdml,
            "lr": lr}


def stored_results(store: RunStore, meta: RunMeta) -> dict[str, TrainResult]:
    """Each finished modality's result as its train_log.json and run.json entry recorded it."""
    out = {}
    for m in meta.finished_modalities():
        log, entry = read_json(store.train_log_path(m)), meta.modalities[m]
        out[m] = TrainResult(m, log["best_epoch"], log["best_val_label"], log["epochs"],
                             log.get("resumed_at_epoch") or [], log.get("history") or [],
                             entry.get("train_seconds", 0.0), entry.get("device", "cpu"),
                             planned_epochs=(entry.get("config") or meta.sdml).get("epochs", 0),
                             patience=log.get("patience"), stopped_early=log.get("stopped_early"))
    return out


def _log_results(tracker: Tracker, parent: str | None, store: RunStore, meta: RunMeta,
                 metrics: evaluate.SDMLMetrics, results: dict[str, TrainResult],
                 plot_paths: list[Path]) -> None:
    _log_modalities(tracker, parent, meta, results)
    tracker.log_metrics(parent, {f"map/{k}": v for k, v in metrics.map.items()})
    tracker.log_metrics(parent, {"map/mean": metrics.map_mean})
    for path in [store.metrics_path, store.run_json, store.projection_path, *plot_paths]:
        tracker.log_artifact(parent, path)


def finish_run(store: RunStore, meta: RunMeta, new_modalities: list[str], tracker: Tracker,
               parent_run: str | None, results: dict[str, TrainResult], top_k: int | None,
               no_relevant: str = "zero") -> evaluate.SDMLMetrics:
    """Evaluate the pairs the new modalities change, write metrics/plots, log, mark finished.

    ``top_k``: also mAP@k, a query with no relevant item in its top k scored as ``no_relevant``
    says ("zero" or "skip"); stored mAP@k of another k or mode is recomputed for every pair."""
    modalities = meta.finished_modalities()
    n_classes = meta.dataset["n_classes"]
    emb = evaluate.load_test_embeddings(store, modalities, n_classes)
    old = evaluate.SDMLMetrics.read(store)
    # Pairs among untouched modalities keep their stored values (no re-encoding, no recompute).
    maps = dict(old.map) if old else {}
    pairs = evaluate.pairs_involving(new_modalities, modalities) if old else evaluate.all_pairs(modalities)
    maps.update(evaluate.pair_maps(emb, pairs))
    maps_at_k = None
    if top_k:
        maps_at_k = old.stored_maps_at_k(top_k, no_relevant) if old else {}
        todo = pairs if maps_at_k else evaluate.all_pairs(modalities)
        maps_at_k.update(evaluate.pair_maps(emb, todo, top_k=top_k, no_relevant=no_relevant))
    metrics = evaluate.build_metrics(maps, modalities, maps_at_k, top_k, no_relevant=no_relevant,
                                     n_test={m: len(emb[m][0]) for m in modalities})
    metrics.write(store)
    plot_paths = make_plots(store, metrics, emb)
    _log_results(tracker, parent_run, store, meta, metrics, results, plot_paths)
    meta.finish()
    store.write(meta)
    return metrics


def _log_modalities(tracker: Tracker, parent: str | None, meta: RunMeta,
                    results: dict[str, TrainResult]) -> None:
    for m, result in results.items():
        child = tracker.start_run(m, parent_id=parent, tags={"modality": m})
        tracker.log_params(child, {"modality": m, **meta.modalities[m].get("config", {}),
                                   "projection_sha256": meta.projection["sha256"],
                                   "dataset": meta.dataset["name"]})
        rows = []
        for h in result.history:
            step = int(h["epoch"])
            rows += [("loss/train", h["loss_train"], step), ("loss/recon", h["loss_recon"], step),
                     ("loss/label", h["loss_label"], step), ("loss/val_label", h["loss_val_label"], step)]
        rows += [("best_epoch", result.best_epoch, 0), ("best_val_label", result.best_val_label, 0),
                 ("train_seconds", result.train_seconds, 0)]
        if result.stopped_early is not None:
            rows.append(("stopped_early_epoch", result.stopped_early, 0))
        tracker.log_metric_rows(child, rows)
        meta.modalities[m]["mlflow_run_id"] = child
        tracker.end_run(child)


def make_plots(store: RunStore, metrics: evaluate.SDMLMetrics, emb: evaluate.Embeddings) -> list[Path]:
    from scalable_xmr.tracking import plots  # matplotlib loads only when a run is plotted

    out = [plots.map_heatmap(metrics.modalities, metrics.map, metrics.map_mean,
                             store.plots_dir / "map_heatmap.png")]
    if len(emb) < 2:  # one modality so far (more can be added later): no pair to draw curves of
        return out
    modalities = list(emb)  # the run's order: each modality's colour in every panel and plot
    pr, scope = {}, {}
    for q, t in evaluate.all_pairs(modalities):
        args = (emb[q][2], emb[t][2], emb[q][1], emb[t][1])
        pr[(q, t)] = precision_recall_curve(*args)
        # K from 1 to the target's gallery size, with SDML Fig. 2-4's K = 100, ..., 1000 that fit
        # (functional.retrieval.scope_levels); the paper's range is shaded.
        scope[(q, t)] = precision_scope_curve(*args)
    out.append(plots.curves(pr, store.plots_dir / "precision_recall.png", "recall", "precision",
                            "Precision-recall (SDML Fig. 2-3)", modalities))
    paper = (PAPER_SCOPES[0], PAPER_SCOPES[-1], f"SDML Fig. 4: K = {PAPER_SCOPES[0]}..{PAPER_SCOPES[-1]}")
    out.append(plots.curves(scope, store.plots_dir / "precision_scope.png", "scope K (items returned)",
                            "precision@K", "Precision-scope (SDML Fig. 4)", modalities, log_x=True,
                            span=paper))
    return out
