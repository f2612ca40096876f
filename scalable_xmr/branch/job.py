"""The branch-model job as a library function: paired data -> parallel actors -> R@K -> tracking.

``train_pairs`` is what ``jobs/train_pairs.py`` and ``xmr train-pairs`` call. Every *member* (a
model, or with ``ensemble = M`` each of its M seeds) trains in its own Ray actor, all at once in one
placement group (one GPU each when the cluster has GPUs). An actor gets only a
:class:`~scalable_xmr.branch.member.BranchJob` (paths and configs), reads its own splits, and
runs :func:`~scalable_xmr.branch.member.train_branch`, checkpointing into the run store: a
restarted actor resumes from its last checkpoint. The driver then averages each model's members
(the ensemble), writes ``metrics.json`` and plots, logs MLflow runs and marks the run finished.

Run store (docs/run-store.md, kind "pairs")::

    <run>/run.json                          dataset, members with their configs, status
    <run>/models/<member>/model.pt          best state_dict + configs (weights_only loadable)
    <run>/models/<member>/checkpoints/      resumable trainer state
    <run>/models/<member>/sims/<split>.npy  similarity matrices (and <split>_text.npy)
    <run>/models/<model>/sims/, ensemble.json   the mean of a model's M members (M > 1)
    <run>/metrics.json                      plain and re-ranked R@K per member and ensemble
    <run>/plots/rerank_k.png                R@1 against the re-ranking K on val (MTFN-RR Fig. 7a)

Once the run is finished (run.json written with status finished) every member's ``checkpoints/``
is removed unless ``keep_checkpoints`` -- the SDML job's rule and order (sdml/job.py): a failed run
keeps all of it, finished members' included (``--resume`` skips them and reads their result.json).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scalable_xmr.branch.config import PairTrainerConfig, stored_trainer
from scalable_xmr.branch.evaluate import COCO_5K, COCO_FOLDS, check_t2i_groups, rerank_grid_for
from scalable_xmr.branch.member import BranchJob, BranchResult, checkpoint_dir, jsonable, run_member
from scalable_xmr.branch.report import (
    build_metrics,
    ensembles,
    log_members,
    pairs_table,
    run_params,
)
from scalable_xmr.config import TrackingConfig
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.distributed.actors import ActorResources, ActorTask, run_actors
from scalable_xmr.distributed.cluster import check_gpus, connect, has_gpus
from scalable_xmr.errors import InputError
from scalable_xmr.io import absolute_uri, check_writable, read_json
from scalable_xmr.models.registry import BRANCH_MODELS
from scalable_xmr.store import training_state
from scalable_xmr.store.lock import run_lock
from scalable_xmr.store.meta import RunMeta, now_iso
from scalable_xmr.store.remote import uri_of
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking import plots
from scalable_xmr.tracking.runs import (
    RunSummary,
    job_tracking_uri,
    parent_run,
    stored_run_url,
    tracking_footer,
)
from scalable_xmr.tracking.tracker import Tracker


@dataclass(frozen=True)
class PairsRequest:
    """What ``train_pairs`` trains: members = models x ensemble seeds."""

    run_dir: str
    dataset_uri: str
    trainers: dict[str, PairTrainerConfig]  # model name -> its training options (seed = first seed)
    model_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> config values
    ensemble: int = 1  # M members per model, seeds seed .. seed + M - 1, similarities averaged
    target_uri: str | None = None  # VSA only: unpaired target-domain dataset
    ks: tuple[int, ...] | None = None  # fixed re-ranking K (None: grid on val)
    k_texts: tuple[int, ...] | None = None  # fixed K' (None: grid on val)
    t2i_groups: str = "candidate"  # T2I re-ranking's neighbour groups: "candidate" (Eq. 15) or "query"
    checkpoint_every: int = 1
    gpus_per_model: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_model: float | None = None  # None: the cluster's CPUs shared out evenly
    max_restarts: int = 2
    tracking: TrackingConfig = TrackingConfig()
    resume: bool = False
    overwrite: bool = False
    show_progress: bool = True
    keep_checkpoints: bool = False  # keep every member's checkpoints/ once the run is finished

    def __post_init__(self) -> None:
        if not self.trainers:
            raise InputError("give at least one --model")
        for name, cfg in self.trainers.items():
            if name not in BRANCH_MODELS or not isinstance(cfg, PairTrainerConfig) or cfg.model != name:
                raise InputError(f"trainers: entry {name!r} must be a PairTrainerConfig of that model")
        unknown = sorted(set(self.model_configs) - set(self.trainers))
        if unknown:
            raise InputError(f"model_configs: {unknown[0]!r} is not among the models {list(self.trainers)}")
        if not isinstance(self.ensemble, int) or isinstance(self.ensemble, bool) or self.ensemble < 1:
            raise InputError(f"--ensemble must be an integer >= 1, got {self.ensemble!r}")
        if self.target_uri is not None and "vsa" not in self.trainers:
            raise InputError("--target is the unpaired target domain of VSA (VSA-AE-MMD): add --model vsa")
        check_t2i_groups(self.t2i_groups, "--t2i-groups")
        if self.gpus_per_model is not None and self.gpus_per_model < 0:
            raise InputError(f"--gpus-per-model must be >= 0, got {self.gpus_per_model}")

    def members(self) -> list[tuple[str, str, int]]:
        """(member name, model, seed) of every member, model by model."""
        out = []
        for model, cfg in self.trainers.items():
            for i in range(self.ensemble):
                seed = cfg.seed + i
                out.append((model if self.ensemble == 1 else f"{model}-seed{seed}", model, seed))
        return out


@dataclass
class PairsSummary(RunSummary):
    table: str = ""  # the R@K table printed at the end
    training_state: str = ""  # what became of the members' checkpoints/ (a footer line)


# ------------------------------------------------------------------------------ validation
def check_dataset(req: PairsRequest) -> dict[str, Any]:
    """Validate the paired dataset (and target) at the door, without reading image features.

    Catches unknown image references, empty or out-of-vocabulary captions, uneven caption counts
    in val/test (R@K needs a constant n) and re-ranking K / K' that do not fit the galleries.
    Returns the split sizes recorded in run.json.
    """
    ds = open_paired_dataset(req.dataset_uri)
    present = ds.splits()
    missing = [s for s in ("train", "val", "test") if s not in present]
    if missing:
        raise InputError(f"--data {req.dataset_uri}: no {missing[0]!r} split (it has {present})")
    sizes = {}
    for split in ("train", "val", "test"):
        n_img, n_cap, per_image = ds.split_sizes(split)
        if per_image is None and split != "train":
            raise InputError(
                f"--data {req.dataset_uri}: split {split!r} has {n_cap} captions for {n_img} images but not "
                "the same number of captions for every image, which R@K needs (VSE++ protocol)"
            )
        sizes[split] = {"images": n_img, "captions": n_cap, "captions_per_image": per_image}
    mtfn = req.trainers.get("mtfn")
    if mtfn is not None and mtfn.text_epochs > 0 and sizes["train"]["captions_per_image"] == 1:
        raise InputError(
            f"--text-epochs {mtfn.text_epochs}: MTFN's S_TT trains on two captions of one image "
            f"(MTFN-RR Eq. 7) but {req.dataset_uri} has 1 caption per image; use --text-epochs 0 "
            "(T2I re-ranking then uses the cosine of MTFN's text embeddings)"
        )
    val, test = sizes["val"], sizes["test"]
    rerank_grid_for(val["images"], val["captions"], req.ks, req.k_texts)  # on val: the selection
    fold = COCO_5K // COCO_FOLDS if test["images"] == COCO_5K else test["images"]
    rerank_grid_for(min(fold, test["images"]), fold * test["captions_per_image"], req.ks, req.k_texts)
    if req.target_uri is not None:
        _check_target(req.target_uri)
    return {"uri": absolute_uri(req.dataset_uri), "splits": sizes,
            "text": "tokens" if ds.vocab is not None else "features"}


def _check_target(uri: str) -> None:
    """VSA's target domain: a train split (unpaired, for the MMD term) and a test split with
    image-caption pairs, the same number of captions per image (the target-domain R@K of
    VSA-AE-MMD Table 1); a val split, when present, is scored too and held to the same rule."""
    target = open_paired_dataset(uri)
    present = target.splits()
    for split in ("train", "test"):
        if split not in present:
            why = "its images and captions join the MMD term" if split == "train" else \
                "target-domain R@K (VSA-AE-MMD Table 1) is scored on its pairs"
            raise InputError(f"--target {uri}: no {split!r} split (it has {present}); {why}")
    target.split_sizes("train")
    for split in ("test", "val"):
        if split not in present:
            continue
        n_img, n_cap, per_image = target.split_sizes(split)
        if n_cap == 0:
            raise InputError(f"--target {uri}: split {split!r} has {n_img} images and no captions: "
                             "target-domain R@K needs its image-caption pairs")
        if per_image is None:
            raise InputError(f"--target {uri}: split {split!r} has {n_cap} captions for {n_img} images but "
                             "not the same number of captions for every image, which R@K needs")


# ------------------------------------------------------------------------------ the job
def train_pairs(req: PairsRequest, address: str | None = None) -> PairsSummary:
    """Train every member in parallel Ray actors, evaluate, ensemble, write the run, track."""
    start = time.perf_counter()
    dataset = check_dataset(req)
    check_writable(req.run_dir, "--run")
    store = RunStore(req.run_dir, pull=False)  # refresh() below, under the lock, pulls it
    with run_lock(store.root):  # one job at a time on a run directory, taken before Ray starts
        store.refresh()  # an object-storage run: its local mirror as the bucket holds it
        mode = store.plan(overwrite=req.overwrite, resume=req.resume)
        if mode == "resume":
            stored = _check_resume(store, req, dataset)  # nothing written
            done = all(m.get("status") == "finished" for m in stored.members.values())
            if done and stored.status == "finished" and req.keep_checkpoints:
                training_state.refuse_keep_on_finished(store.uri, _state_dirs(store, stored))
        connect(address)
        check_gpus(req.gpus_per_model or 0.0, "--gpus-per-model")
        return _train(req, store, dataset, store.prepare(mode), start)


def _train(req: PairsRequest, store: RunStore, dataset: dict[str, Any], mode: str,
           start: float) -> PairsSummary:
    if mode == "resume":
        stored = _check_resume(store, req, dataset)
        done = all(m.get("status") == "finished" for m in stored.members.values())
        if stored.status == "finished" and done:
            # Nothing to train: a finished run is read, never rewritten (tracking flags or not).
            metrics = store.read_metrics()
            return PairsSummary(store.uri, metrics, _finished_results(store, stored),
                                stored_run_url(stored, store.uri), time.perf_counter() - start,
                                table=pairs_table(metrics))
    meta = _open_run(store, mode, req, dataset)
    tracker = Tracker(job_tracking_uri(req.tracking.tracking_uri, meta, store.root),
                      req.tracking.experiment, req.tracking.enabled)
    run_name = f"pairs:{store.root.name}"
    with parent_run(store, meta, tracker, mode, run_name, "train_pairs", run_params(meta)) as parent:
        results = _finished_results(store, meta)
        jobs = [_job(store, req, name, model, seed) for name, model, seed in req.members()
                if name not in results]
        try:
            trained = _train_members(jobs, req)
        except BaseException as e:  # finished members stay finished; the one that failed says why
            _record_failure(meta, e)
            raise  # parent_run writes run.json, status failed
        store.refresh()  # an object-storage run: what the actors uploaded, from any node
        for name, result in trained.items():
            meta.members[name].pop("error", None)  # failed before, finished now
            meta.members[name].update(_member_entry(result))
            store.write(meta)  # each finished member is recorded as soon as it is known
            results[name] = result
        metrics = _finish(store, meta, results, tracker, parent)
    state = training_state.after_finish(store.uri, _state_dirs(store, meta), req.keep_checkpoints,
                                        where="models/*/checkpoints/")
    return PairsSummary(store.uri, metrics, results, tracking_footer(tracker, parent, store.uri),
                        time.perf_counter() - start, table=pairs_table(metrics), training_state=state)


def _state_dirs(store: RunStore, meta: RunMeta) -> list[Path]:
    """The checkpoints/ folders of the run's members."""
    return [checkpoint_dir(store.member_dir(name)) for name in meta.members or {}]


def _log_results(tracker: Tracker, parent: str | None, store: RunStore, meta: RunMeta,
                 metrics: dict[str, Any], results: dict[str, BranchResult]) -> None:
    log_members(tracker, parent, meta, metrics, results)
    for path in (store.metrics_path, store.run_json, store.plots_dir / "rerank_k.png"):
        tracker.log_artifact(parent, path)


def log_stored_run(store: RunStore, meta: RunMeta, tracker: Tracker, parent: str | None = None) -> str | None:
    """Log a finished run to MLflow from its run store alone (``xmr track``): into ``parent``, else
    a new parent run with the job's params; one child per member and ensemble, the same metrics
    and artifacts."""
    parent = parent or tracker.start_run(f"pairs:{store.root.name}", tags={
        "job": "train_pairs", "xmr.run_dir": store.uri, "xmr.logged_from_store": "true"})
    tracker.log_params(parent, run_params(meta))
    _log_results(tracker, parent, store, meta, store.read_metrics(), _finished_results(store, meta))
    tracker.end_run(parent)
    return parent


def _record_failure(meta: RunMeta, error: BaseException) -> None:
    """The members an actor error reports finished (distributed.actors.failed_task) and the one
    that raised it, marked failed with its one line."""
    for name, result in getattr(error, "xmr_done", {}).items():
        if name in meta.members:
            meta.members[name].update(_member_entry(result))
    failed = getattr(error, "xmr_task", None)
    if failed in meta.members:
        meta.members[failed].update(status="failed", error=str(error))


def _finish(store: RunStore, meta: RunMeta, results: dict[str, BranchResult], tracker: Tracker,
            parent: str | None) -> dict[str, Any]:
    """Ensembles, metrics.json, plots, MLflow children and artifacts; then status finished."""
    metrics = build_metrics(meta, results, ensembles(store, meta, results))
    store.write_metrics(metrics)
    plots.rerank_k(metrics, store.plots_dir / "rerank_k.png")
    _log_results(tracker, parent, store, meta, metrics, results)
    meta.finish()
    store.write(meta)
    return metrics


def _member_settings(req: PairsRequest, model: str, seed: int) -> dict[str, Any]:
    from dataclasses import replace

    trainer = asdict(replace(req.trainers[model], seed=seed))
    return {"model": model, "seed": seed, "trainer": trainer,
            "model_config": dict(req.model_configs.get(model, {})),
            "target_uri": absolute_uri(req.target_uri) if req.target_uri and model == "vsa" else None}


def _wanted(req: PairsRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """(member name -> settings, the re-ranking block) these flags ask for."""
    wanted = {name: jsonable(_member_settings(req, model, seed)) for name, model, seed in req.members()}
    rerank = {"ks": list(req.ks) if req.ks else None, "k_texts": list(req.k_texts) if req.k_texts else None,
              "t2i_groups": req.t2i_groups}
    return wanted, rerank


def _check_resume(store: RunStore, req: PairsRequest, dataset: dict[str, Any]) -> RunMeta:
    """The stored run, after checking these flags continue it exactly (nothing written)."""
    wanted, rerank = _wanted(req)
    meta = store.read()
    if meta.kind != "pairs":
        raise InputError(f"{store.root}: a {meta.kind!r} run, not a train-pairs run")
    if meta.dataset["uri"] != dataset["uri"]:
        raise InputError(f"{store.root}: run was trained on {meta.dataset['uri']}, not {dataset['uri']}")
    if meta.rerank is not None:  # runs from before t2i_groups re-ranked with the query's group
        meta.rerank.setdefault("t2i_groups", "query")
    if meta.rerank != rerank:
        raise InputError(
            f"{store.root}: run chose re-ranking K with {meta.rerank}, these flags ask for "
            f"{rerank}; resume with the same --k / --k-text / --t2i-groups or pass --overwrite"
        )
    if sorted(meta.members) != sorted(wanted):
        raise InputError(
            f"{store.root}: run has members {sorted(meta.members)}, these flags ask for "
            f"{sorted(wanted)}; resume with the same --model / --ensemble / --seed or pass --overwrite"
        )
    for name, settings in wanted.items():
        old = meta.members[name]
        saved = old.get("settings")
        if isinstance(saved, dict) and "trainer" in saved:  # fields added since the run started
            saved = {**saved, "trainer": stored_trainer(saved["trainer"])}
        if saved != settings:
            raise InputError(
                f"{store.root}: member {name!r} was started with other settings "
                f"({old.get('settings')}); resume with the same flags or pass --overwrite"
            )
    return meta


def _open_run(store: RunStore, mode: str, req: PairsRequest, dataset: dict[str, Any]) -> RunMeta:
    if mode == "resume":
        meta = _check_resume(store, req, dataset)
        meta.status = "running"
        store.write(meta)
        return meta
    wanted, rerank = _wanted(req)
    store.root.mkdir(parents=True, exist_ok=True)
    meta = RunMeta(
        kind="pairs", dataset=dataset, target=absolute_uri(req.target_uri) if req.target_uri else None,
        models=list(req.trainers), ensemble=req.ensemble, rerank=rerank,
        members={name: {"status": "pending", "settings": s} for name, s in wanted.items()},
    )
    store.write(meta)
    return meta


def _finished_results(store: RunStore, meta: RunMeta) -> dict[str, BranchResult]:

    out = {}
    for name, entry in meta.members.items():
        if entry.get("status") == "finished":
            saved = read_json(store.member_dir(name) / "result.json")
            out[name] = BranchResult(**{"t2i_groups": "query", **saved})  # older results: query groups
    return out


def _gpus(req: PairsRequest) -> float:
    """GPUs per member: as asked, else 1 when the cluster has GPUs."""
    if req.gpus_per_model is not None:
        return req.gpus_per_model
    return 1.0 if has_gpus() else 0.0


def _job(store: RunStore, req: PairsRequest, name: str, model: str, seed: int) -> BranchJob:
    gpus = _gpus(req)
    return BranchJob(
        out_dir=uri_of(store.member_dir(name)), dataset_uri=absolute_uri(req.dataset_uri),
        trainer=dataclasses.replace(req.trainers[model], seed=seed),
        model_config=dict(req.model_configs.get(model, {})),
        name=name, target_uri=absolute_uri(req.target_uri) if req.target_uri and model == "vsa" else None,
        ks=req.ks, k_texts=req.k_texts, t2i_groups=req.t2i_groups, checkpoint_every=req.checkpoint_every,
        # "auto": CUDA when the actor sees its GPU, else CPU (a node whose GPU torch cannot use,
        # like the fake GPU nodes of tests/e2e/test_multinode.py); the result records which.
        device="auto" if gpus > 0 else "cpu")


def _member_entry(result: BranchResult) -> dict[str, Any]:
    patience = result.trainer_config.get("patience")  # with it: the epoch each stage stopped at, or null
    early = {} if patience is None else {"patience": patience, "stopped_early": result.stopped_early}
    return {"status": "finished", "best_epoch": result.best_epoch, **early, "choice": result.choice,
            "t2i_groups": result.t2i_groups,
            "resumed_at_epoch": result.resumed_at_epoch, "train_seconds": result.train_seconds,
            "device": result.device, "finished": now_iso()}


# ------------------------------------------------------------------------------ Ray
def _train_members(jobs: list[BranchJob], req: PairsRequest) -> dict[str, BranchResult]:
    """All members at once, one actor each (the same run_actors as the SDML job's modalities)."""
    placement = ActorResources(gpus=_gpus(req), cpus=req.cpus_per_model, max_restarts=req.max_restarts,
                               flags=("--cpus-per-model", "--gpus-per-model"))
    tasks = [ActorTask(job.label, run_member, job) for job in jobs]
    return run_actors(tasks, placement, show_progress=req.show_progress)
