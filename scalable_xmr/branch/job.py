"""The branch-model job as a library function: paired data -> parallel actors -> R@K -> tracking.

``train_pairs`` is what ``jobs/train_pairs.py`` and ``xmr train-pairs`` call. Every *member* (a
model, or with ``ensemble = M`` each of its M seeds) trains in its own Ray actor, all at once in one
placement group (one GPU each when the cluster has GPUs). An actor gets only a
:class:`~scalable_xmr.branch.member.BranchSpec` (paths and configs), reads its own splits, and
runs :func:`~scalable_xmr.branch.member.train_branch`, checkpointing into the run store: a
restarted actor resumes from its last checkpoint. The driver then averages each model's members
(the ensemble), writes ``metrics.json`` and plots, logs MLflow runs and marks the run finished.

Run store (docs/run-store.md, kind "branch")::

    <run>/run.json                          dataset, members with their configs, status
    <run>/models/<member>/model.pt          best state_dict + configs (weights_only loadable)
    <run>/models/<member>/checkpoints/      resumable trainer state
    <run>/models/<member>/sims/<split>.npy  similarity matrices (and <split>_text.npy)
    <run>/models/<model>/sims/, ensemble.json   the mean of a model's M members (M > 1)
    <run>/metrics.json                      plain and re-ranked R@K per member and ensemble
    <run>/plots/rerank_k.png                R@1 against the re-ranking K on val (MTFN-RR Fig. 7a)

Once the run is finished (run.json written with status finished) every member's ``checkpoints/``
is removed unless ``keep_checkpoints`` -- every job's rule and order (runs/session.py): a failed run
keeps all of it, finished members' included (``--resume`` skips them and reads their result.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scalable_xmr.branch.checkpoints import checkpoint_dir, jsonable
from scalable_xmr.branch.config import PairTrainerConfig, stored_trainer
from scalable_xmr.branch.evaluate import COCO_5K, COCO_FOLDS, check_t2i_groups, rerank_grid_for
from scalable_xmr.branch.member import BranchResult, BranchSpec, run_member
from scalable_xmr.branch.metrics_file import BranchMetrics
from scalable_xmr.branch.report import (
    ensembles,
    log_members,
    rk_metrics,
    rk_table,
    run_params,
)
from scalable_xmr.config import TrackingConfig
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.distributed.actors import ActorResources, ActorTask, Outcome, run_tasks
from scalable_xmr.distributed.cluster import check_gpus, has_gpus
from scalable_xmr.errors import InputError
from scalable_xmr.io import absolute_uri
from scalable_xmr.models.registry import BRANCH_MODELS
from scalable_xmr.runs.session import RunRecords, RunSummary, SessionOptions, run_session
from scalable_xmr.store.meta import RunMeta, now_iso
from scalable_xmr.store.remote import uri_of
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking import plots
from scalable_xmr.tracking.tracker import Tracker


@dataclass(frozen=True)
class BranchRequest:
    """What ``train_branch`` trains: members = models x ensemble seeds."""

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
class BranchSummary(RunSummary):
    table: str = ""  # the R@K table printed at the end


# ------------------------------------------------------------------------------ validation
def check_dataset(req: BranchRequest) -> dict[str, Any]:
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
def train_branch(req: BranchRequest, address: str | None = None) -> BranchSummary:
    """Train every member in parallel Ray actors, evaluate, ensemble, write the run, track."""
    kind = BranchRun(req, check_dataset(req))
    summary = run_session(kind, [name for name, _, _ in req.members()], SessionOptions.of(req), address)
    return BranchSummary(**vars(summary), table=rk_table(summary.metrics))


def _log_results(tracker: Tracker, parent: str | None, store: RunStore, meta: RunMeta,
                 metrics: BranchMetrics, results: dict[str, BranchResult]) -> None:
    log_members(tracker, parent, meta, metrics, results)
    for path in (store.metrics_path, store.run_json, store.plots_dir / "rerank_k.png"):
        tracker.log_artifact(parent, path)


def _state(store: RunStore, meta: RunMeta) -> tuple[list[Path], list[Path]]:
    return [checkpoint_dir(store.member_dir(name)) for name in meta.members or {}], []


# The branch models' units are the run's members (run.json ``members``; docs/run-store.md).
RECORDS = RunRecords(kind="branch", job="train_pairs", where="models/*/checkpoints/",
                     units=lambda meta: meta.members if meta.members is not None else {},
                     entry=lambda result: _member_entry(result),
                     stored_results=lambda store, meta: _finished_results(store, meta),
                     params=run_params, log_results=_log_results, state=_state,
                     read_metrics=BranchMetrics.read)


class BranchRun:
    """One ``xmr train-pairs`` job's members; ``dataset``: :func:`check_dataset`'s record."""

    records = RECORDS

    def __init__(self, req: BranchRequest, dataset: dict[str, Any]):
        self.req, self.dataset = req, dataset
        self.wanted, self.rerank = _wanted(req)

    def check_resume(self, store: RunStore, stored: RunMeta) -> None:
        """These flags continue the stored run exactly (nothing written)."""
        wanted, rerank, dataset = self.wanted, self.rerank, self.dataset
        if stored.kind != "branch":
            raise InputError(f"{store.root}: a {stored.kind!r} run, not a train-pairs run")
        if stored.dataset["uri"] != dataset["uri"]:
            raise InputError(f"{store.root}: run was trained on {stored.dataset['uri']}, "
                             f"not {dataset['uri']}")
        if stored.rerank is not None:  # runs from before t2i_groups re-ranked with the query's group
            stored.rerank.setdefault("t2i_groups", "query")
        if stored.rerank != rerank:
            raise InputError(
                f"{store.root}: run chose re-ranking K with {stored.rerank}, these flags ask for "
                f"{rerank}; resume with the same --k / --k-text / --t2i-groups or pass --overwrite"
            )
        if sorted(stored.members) != sorted(wanted):
            raise InputError(
                f"{store.root}: run has members {sorted(stored.members)}, these flags ask for "
                f"{sorted(wanted)}; resume with the same --model / --ensemble / --seed or pass --overwrite"
            )
        for name, settings in wanted.items():
            old = stored.members[name]
            saved = old.get("settings")
            if isinstance(saved, dict) and "trainer" in saved:  # fields added since the run started
                saved = {**saved, "trainer": stored_trainer(saved["trainer"])}
            if saved != settings:
                raise InputError(
                    f"{store.root}: member {name!r} was started with other settings "
                    f"({old.get('settings')}); resume with the same flags or pass --overwrite"
                )

    def params(self, meta: RunMeta) -> dict[str, Any]:
        return run_params(meta)

    def before_ray(self, todo: Sequence[str]) -> None:
        pass

    def check_cluster(self) -> None:
        check_gpus(self.req.gpus_per_model or 0.0, "--gpus-per-model")

    def new_meta(self, store: RunStore) -> RunMeta:
        req = self.req
        store.root.mkdir(parents=True, exist_ok=True)
        target = absolute_uri(req.target_uri) if req.target_uri else None
        return RunMeta(
            kind="branch", dataset=self.dataset, target=target,
            models=list(req.trainers), ensemble=req.ensemble, rerank=self.rerank,
            members={name: {"status": "pending", "settings": s} for name, s in self.wanted.items()},
        )

    def reopen(self, meta: RunMeta) -> None:
        pass

    def specs(self, store: RunStore, meta: RunMeta, todo: Sequence[str]) -> list[BranchSpec]:
        members = {name: (model, seed) for name, model, seed in self.req.members()}
        return [_job(store, self.req, name, *members[name]) for name in todo]

    def train(self, jobs: list[BranchSpec]) -> Outcome:
        """All members at once, one actor each (the same run_tasks as the SDML job's modalities)."""
        req = self.req
        placement = ActorResources(gpus=_gpus(req), cpus=req.cpus_per_model, max_restarts=req.max_restarts,
                                   flags=("--cpus-per-model", "--gpus-per-model"))
        tasks = [ActorTask(job.label, run_member, job) for job in jobs]
        return run_tasks(tasks, placement, show_progress=req.show_progress)

    def finish(self, store: RunStore, meta: RunMeta, results: dict[str, BranchResult], new: Sequence[str],
               tracker: Tracker, parent: str | None) -> BranchMetrics:
        return _finish(store, meta, results, tracker, parent)


def _finish(store: RunStore, meta: RunMeta, results: dict[str, BranchResult], tracker: Tracker,
            parent: str | None) -> BranchMetrics:
    """Ensembles, metrics.json, plots, MLflow children and artifacts; then status finished."""
    metrics = rk_metrics(meta, results, ensembles(store, meta, results))
    metrics.write(store)
    grids = {name: e["val_grid"] for name, e in metrics.models.items()}  # plot panels: as before
    grids.update({f"{m} ensemble": e["val_grid"] for m, e in metrics.ensembles.items()})
    plots.rerank_k(grids, store.plots_dir / "rerank_k.png")
    _log_results(tracker, parent, store, meta, metrics, results)
    meta.finish()
    store.write(meta)
    return metrics


def _member_settings(req: BranchRequest, model: str, seed: int) -> dict[str, Any]:
    from dataclasses import replace

    trainer = asdict(replace(req.trainers[model], seed=seed))
    return {"model": model, "seed": seed, "trainer": trainer,
            "model_config": dict(req.model_configs.get(model, {})),
            "target_uri": absolute_uri(req.target_uri) if req.target_uri and model == "vsa" else None}


def _wanted(req: BranchRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """(member name -> settings, the re-ranking block) these flags ask for."""
    wanted = {name: jsonable(_member_settings(req, model, seed)) for name, model, seed in req.members()}
    rerank = {"ks": list(req.ks) if req.ks else None, "k_texts": list(req.k_texts) if req.k_texts else None,
              "t2i_groups": req.t2i_groups}
    return wanted, rerank


def _finished_results(store: RunStore, meta: RunMeta) -> dict[str, BranchResult]:

    out = {}
    for name, entry in meta.members.items():
        if entry.get("status") == "finished":
            out[name] = BranchResult.read(store.member_dir(name))
    return out


def _gpus(req: BranchRequest) -> float:
    """GPUs per member: as asked, else 1 when the cluster has GPUs."""
    if req.gpus_per_model is not None:
        return req.gpus_per_model
    return 1.0 if has_gpus() else 0.0


def _job(store: RunStore, req: BranchRequest, name: str, model: str, seed: int) -> BranchSpec:
    gpus = _gpus(req)
    return BranchSpec(
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
