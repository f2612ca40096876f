"""Train one branch model on a paired dataset and evaluate it, plain and re-ranked (no Ray inside).

:func:`train_branch` is the one function both the ``train-pairs`` job's Ray actors and a Tune
trial call. It reads its own splits from the dataset path (no arrays travel through a driver),
trains a :class:`~scalable_xmr.branch.trainer.PairTrainer`, writes an atomic checkpoint every
``checkpoint_every`` epochs and resumes from the last one when it finds it (a restarted actor or
a restored trial continues where it stopped), then scores val and test, evaluates the re-ranking
grid on val (``branch.evaluate``) and applies the chosen K / K' to test.

Everything lands in ``out_dir``::

    model.pt               best state_dict + configs (torch.load(weights_only=True))
    checkpoints/last.pt    PairTrainer state (resumable); checkpoints/job.json: its settings
    sims/{val,test}.npy    image x caption ranking scores; sims/{val,test}_text.npy caption x caption
                           (``model.ranking_scores``: MTFN's logits W_m f, not its sigmoid S_IT)
    sims/target_{test,val}.npy  VSA with a target domain: its image x caption scores there
    result.json            history, selected epoch, val/test R@K, the K grid and the choice
                           (with ``t2i_groups``, the T2I neighbour groups the grid and test used),
                           and ``target``: the target-domain R@K (VSA-AE-MMD Table 1)

Selection -- the epoch, K and K' -- uses the source val split only, with or without a target.
Ensembles of members are formed on the driver (``branch.report.evaluate_ensemble``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalable_xmr import faults
from scalable_xmr.branch.config import PairTrainerConfig, stored_trainer
from scalable_xmr.branch.evaluate import (
    KS,
    check_t2i_groups,
    recall_report,
    rerank_grid,
    rerank_grid_for,
    select_rerank,
)
from scalable_xmr.branch.scoring import similarity_matrix, text_cosine_matrix, text_similarity_matrix
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.config import early_stop_note
from scalable_xmr.data.paired import UNK, PairedSplit, open_paired_dataset
from scalable_xmr.distributed.progress import Reporter
from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval import recall_at_k
from scalable_xmr.io import atomic_path, atomic_write_json, read_json
from scalable_xmr.models.base import BranchModel
from scalable_xmr.models.registry import branch_config, build_branch_model
from scalable_xmr.models.runtime import resolve_device
from scalable_xmr.store import torchfile
from scalable_xmr.store.remote import open_dir

EpochHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class BranchJob:
    """Everything one branch model's training needs, by reference (paths, not arrays)."""

    out_dir: str  # absolute: model.pt, checkpoints/, sims/, result.json go here
    dataset_uri: str
    trainer: PairTrainerConfig
    model_config: dict[str, Any] = field(default_factory=dict)  # keys of the model's config class
    name: str = ""  # label in progress rows and results (default: the model name)
    target_uri: str | None = None  # VSA: unpaired target-domain dataset (its train split)
    ks: tuple[int, ...] | None = None  # re-ranking K values tried on val (None: default grid)
    k_texts: tuple[int, ...] | None = None  # K' values tried on val (None: default grid)
    t2i_groups: str = "candidate"  # T2I neighbour groups: "candidate" (Eq. 15) or "query"
    checkpoint_every: int = 1
    device: str = "auto"  # "auto": cuda when this process sees a GPU
    num_threads: int | None = None
    save_sims: bool = True
    # False: a sweep trial -- it selects on val only and never reads the test split; the sweep
    # scores its chosen trial on test once, at its end (tuning/final_test.py).
    score_test: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.trainer, PairTrainerConfig):
            raise InputError(f"trainer: expected PairTrainerConfig, got {type(self.trainer).__name__}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise InputError(f"checkpoint_every must be an integer >= 1, got {self.checkpoint_every!r}")
        branch_config(self.trainer.model, self.model_config)  # unknown keys / bad values fail here
        check_t2i_groups(self.t2i_groups)

    @property
    def label(self) -> str:
        return self.name or self.trainer.model


@dataclass
class BranchResult:
    name: str
    model: str
    seed: int
    out_dir: str
    history: list[dict[str, Any]]
    best_epoch: dict[str, int | None]  # per stage ("image_text", "text_text")
    val: dict[str, float]  # plain val R@K of the selected model
    test: dict[str, dict[str, float]]  # recall_report: plain, rerank (+ _1k for 5000 images)
    grid: dict[str, list[dict[str, float]]]  # re-ranking grid on val
    choice: dict[str, int]  # k_i2t, k_t2i, k_text
    text_sim: str  # "S_TT" or "cosine"
    trainer_config: dict[str, Any]
    model_config: dict[str, Any]
    captions_per_image: int
    resumed_at_epoch: list[int] = field(default_factory=list)
    train_seconds: float = 0.0
    device: str = "cpu"
    pid: int = 0
    t2i_groups: str = "candidate"  # T2I re-ranking's neighbour groups (grid and test alike)
    target: dict[str, Any] | None = None  # VSA with a target: evaluate_target's R@K on its splits
    # per stage: the (1-based) epoch its patience stopped it at; None: it ran every epoch
    stopped_early: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def footer_note(self) -> str | None:
        """The job footer's line on this member's image-text epochs (``config.early_stop_note``,
        on val rsum), with MTFN's text-text stage when patience stopped it."""
        scores = [float(h["val_score"]) for h in self.history if h["stage"] == "image_text"]
        epochs, best = int(self.trainer_config["epochs"]), self.best_epoch.get("image_text") or 0
        note = early_stop_note(self.name, epochs, best, scores, higher_is_better=True,
                               patience=self.trainer_config.get("patience"),
                               stopped_at=self.stopped_early.get("image_text"))
        text_stop = self.stopped_early.get("text_text")
        if note and text_stop is not None:
            note += f"; its text-text stage stopped early at epoch {text_stop}"
        return note


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def sims_path(out_dir: str | os.PathLike, split: str, text: bool = False) -> Path:
    return Path(out_dir) / "sims" / f"{split}{'_text' if text else ''}.npy"


def remap_tokens(split: PairedSplit, vocab: list[str], to_vocab: list[str]) -> PairedSplit:
    """``split``'s tokens (indices into ``vocab``) as indices into ``to_vocab``; words missing
    there become <unk>. Lets a target set with its own vocabulary feed the source model."""
    if split.tokens is None:
        return split
    index = {w: i for i, w in enumerate(to_vocab)}
    unk = index.get(UNK, 1)
    mapping = np.array([0] + [index.get(w, unk) for w in vocab[1:]], np.int64)  # 0 stays padding
    return dataclasses.replace(split, tokens=mapping[split.tokens], vocab_size=len(to_vocab))


def _read_splits(job: BranchJob) -> tuple[dict[str, PairedSplit], dict[str, PairedSplit]]:
    """(source splits, target splits) the job uses.

    The target (VSA-AE-MMD, ``job.target_uri``) gives its "train" split, unpaired, to the MMD term
    and -- when the job scores test -- its "test" split (and "val" if present) to the target-domain
    R@K of :func:`evaluate_target`; their tokens are remapped to the source vocabulary.
    """
    ds = open_paired_dataset(job.dataset_uri)
    present = ds.splits()
    for split in ("train", "val"):
        if split not in present:
            raise InputError(f"{job.dataset_uri}: no {split!r} split (has {present})")
    wanted = ("train", "val", "test") if job.score_test else ("train", "val")
    splits = {s: ds.read_split(s) for s in wanted if s in present}
    target: dict[str, PairedSplit] = {}
    if job.target_uri is not None:
        tds = open_paired_dataset(job.target_uri)
        required = ("train", "test") if job.score_test else ("train",)
        for split in required:
            if split not in tds.splits():
                raise InputError(f"--target {job.target_uri}: no {split!r} split (has {tds.splits()})")
        scored = ("test", "val") if job.score_test else ()
        for split in ("train", *(s for s in scored if s in tds.splits())):
            target[split] = tds.read_split(split)
            if ds.vocab is not None and tds.vocab is not None:
                target[split] = remap_tokens(target[split], tds.vocab, ds.vocab)
    return splits, target


class _Checkpoints:
    """``checkpoints/last.pt`` + ``job.json`` (the settings it belongs to and the restarts)."""

    def __init__(self, job: BranchJob, model_config: dict[str, Any]) -> None:
        self.dir = checkpoint_dir(job.out_dir)
        self.state = self.dir / "last.pt"
        self.meta_path = self.dir / "job.json"
        self.settings = {"trainer": asdict(job.trainer), "model_config": model_config,
                         "dataset_uri": job.dataset_uri, "target_uri": job.target_uri}
        self.resumed_at: list[int] = []
        self.recovered_from: str | None = None  # why the newest checkpoint was skipped on resume

    def resume(self, trainer: PairTrainer) -> None:
        if not self.state.is_file() and not torchfile.previous(self.state).is_file():
            return
        meta = read_json(self.meta_path) if self.meta_path.is_file() else {}
        saved = {k: meta.get(k) for k in self.settings}
        saved["trainer"] = stored_trainer(saved["trainer"])  # fields added since it was written
        if saved != jsonable(self.settings):
            raise InputError(
                f"{self.state}: checkpoint was written with other settings {saved}; delete "
                f"{self.dir} or train with the same settings"
            )
        self.recovered_from = trainer.load_checkpoint(self.state)
        self.resumed_at = [*meta.get("resumed_at", []), trainer.epoch]
        self._write_meta()

    def save(self, trainer: PairTrainer) -> None:
        if not self.meta_path.is_file():
            self._write_meta()
        trainer.save_checkpoint(self.state)

    def _write_meta(self) -> None:
        atomic_write_json(self.meta_path, {**jsonable(self.settings), "resumed_at": self.resumed_at})


def jsonable(value: Any) -> Any:
    """Tuples as lists, so settings compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _epoch_hook(job: BranchJob, trainer: PairTrainer, ckpt: _Checkpoints, progress, on_epoch):
    def hook(record: dict[str, Any]) -> None:
        epoch, total = trainer.epoch, trainer.total_epochs
        saved = epoch % job.checkpoint_every == 0 or epoch == total
        if saved:
            ckpt.save(trainer)
        best = trainer.best[record["stage"]]
        best_epoch = None if best is None else best["epoch"] + 1
        what = "val rsum" if record["stage"] == "image_text" else "val S_TT r@1"
        row = {"name": job.label, "epoch": epoch, "epochs": total, "stage": record["stage"],
               "loss": record["loss"], "val_score": record["val_score"], "best_epoch": best_epoch,
               "status": f"{record['stage']} loss {record['loss']:.4f} | {what} {record['val_score']:.1f} "
                         f"(best ep {best_epoch})"}
        if progress is not None:
            progress(row)
        if on_epoch is not None:
            on_epoch({**record, "checkpointed": saved, "checkpoint_dir": str(ckpt.dir)})
        if saved:
            faults.crash_after_checkpoint(job.label, epoch, total, ckpt.dir)  # tests only

    return hook


def _save_model(job: BranchJob, trainer: PairTrainer, split: PairedSplit, model_config: dict) -> None:
    best = {s: (None if b is None else b["epoch"]) for s, b in trainer.best.items()}
    payload = {
        "format": "scalable_xmr.branch_model/1",
        "model": job.trainer.model,
        "state_dict": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
        "model_config": model_config,
        "trainer_config": asdict(job.trainer),
        "vocab_size": int(split.vocab_size),
        "image_shape": [int(d) for d in split.images.shape[1:]],
        "text_dim": split.text_dim if trainer.train_data.texts.is_floating_point() else None,
        "best_epoch": best,
    }
    torchfile.save(payload, Path(job.out_dir) / "model.pt")


def save_array(path: Path, array: torch.Tensor) -> None:
    """``array`` as ``path`` (.npy, its dtype kept), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array.numpy())


def score_split(trainer: PairTrainer, split: PairedSplit) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(image x caption sim, caption x caption sim, "S_TT" | "cosine") of a split, on the CPU."""
    return score_model(trainer.model, trainer.config, split, trainer.device)


def score_model(
    model: BranchModel, config: PairTrainerConfig, split: PairedSplit, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """:func:`score_split` of a model trained with ``config``.

    T2I re-ranking's text neighbours come from MTFN's trained S_TT, else from the cosine of the
    model's text embeddings (MTFN-RR §3.2; docs/metrics.md) -- never from the caption groups.
    """
    chunk = config.eval_chunk
    sim = similarity_matrix(model, split, chunk, device=device)
    if getattr(model, "has_text_branch", False) and config.text_epochs > 0:
        return sim, text_similarity_matrix(model, split, chunk, device=device), "S_TT"
    return sim, text_cosine_matrix(model, split, chunk, device=device), "cosine"


def load_branch_model(path: str | os.PathLike, device: torch.device) -> tuple[BranchModel, PairTrainerConfig]:
    """The selected model a training job or trial saved (``model.pt``) and its trainer config."""
    payload = torchfile.load(path)
    if not isinstance(payload, dict) or payload.get("format") != "scalable_xmr.branch_model/1":
        raise InputError(f"{path}: not a branch-model file")
    name = payload["model"]
    model = build_branch_model(name, branch_config(name, payload["model_config"]),
                               vocab_size=payload["vocab_size"], image_dim=payload["image_shape"][-1],
                               text_dim=payload["text_dim"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device), PairTrainerConfig.from_dict(payload["trainer_config"])


def train_branch(
    job: BranchJob, progress: EpochHook | None = None, on_epoch: EpochHook | None = None,
    event: Callable[[str], None] | None = None,
) -> BranchResult:
    """Train ``job``'s model (resuming from its checkpoint), then evaluate plain and re-ranked.

    ``progress(row)`` gets a small row per epoch (name, epoch, epochs, stage, loss, val_score,
    best_epoch) for progress bars; ``on_epoch(record)`` the trainer's full epoch record plus
    ``checkpointed`` / ``checkpoint_dir`` after that epoch's checkpoint is on disk (a Tune trial
    reports from there); ``event(text)`` one line for the driver (a checkpoint found corrupt).
    """
    start = time.perf_counter()
    if job.num_threads:
        torch.set_num_threads(job.num_threads)
    device = resolve_device(job.device)
    splits, target = _read_splits(job)
    model_cfg = branch_config(job.trainer.model, job.model_config)
    # Epochs are selected on the SOURCE val split: in unsupervised domain adaptation the target's
    # pairing is "unknown at training time" (VSA-AE-MMD §3); the target only reports (Table 1).
    trainer = PairTrainer(job.trainer, model_cfg, splits["train"], splits["val"], device,
                          target_split=target.get("train"))
    model_config = jsonable(asdict(trainer.model.config)) if hasattr(trainer.model, "config") else {}
    ckpt = _Checkpoints(job, model_config)
    ckpt.resume(trainer)
    if ckpt.recovered_from and event is not None:
        event(f"{job.label}: {ckpt.recovered_from}; resumed from the checkpoint before it")
    trainer.fit(on_epoch=_epoch_hook(job, trainer, ckpt, progress, on_epoch))
    train_seconds = time.perf_counter() - start
    _save_model(job, trainer, splits["train"], model_config)
    evaluation = evaluate_branch(trainer, splits, job)
    evaluation["target"] = evaluate_target(trainer, target, job)
    result = BranchResult(
        name=job.label, model=job.trainer.model, seed=job.trainer.seed, out_dir=str(job.out_dir),
        history=[_history_row(r) for r in trainer.history],
        best_epoch={s: (None if b is None else b["epoch"] + 1) for s, b in trainer.best.items()},
        trainer_config=asdict(job.trainer), model_config=model_config,
        resumed_at_epoch=list(ckpt.resumed_at), train_seconds=train_seconds, device=str(device),
        pid=os.getpid(), stopped_early=dict(trainer.stopped_early), **evaluation,
    )
    atomic_write_json(Path(job.out_dir) / "result.json", result.to_dict())
    return result


def evaluate_branch(trainer: PairTrainer, splits: dict[str, PairedSplit], job: BranchJob) -> dict[str, Any]:
    """Val plain R@K, the re-ranking grid on val and its choice, test plain and re-ranked R@K.

    K and K' are chosen on the SOURCE val split, also for a VSA model with a target domain: the
    target's pairs are not available to an unsupervised domain adaptation method.
    """
    val = splits["val"]
    n = val.require_captions_per_image()
    val_sim, val_text, text_source = score_split(trainer, val)
    grid_spec = rerank_grid_for(val.n_images, val.n_captions, job.ks, job.k_texts)
    grid = rerank_grid(val_sim, val_text, n, grid_spec, job.t2i_groups)
    choice = select_rerank(grid)
    test, n_test = {}, n
    if "test" in splits:
        test_split = splits["test"]
        n_test = test_split.require_captions_per_image()
        test_sim, test_text, _ = score_split(trainer, test_split)
        test = recall_report(test_sim, test_text, n_test, choice, job.t2i_groups)
        if job.save_sims:
            save_array(sims_path(job.out_dir, "test"), test_sim)
            save_array(sims_path(job.out_dir, "test", text=True), test_text)
    if job.save_sims:
        save_array(sims_path(job.out_dir, "val"), val_sim)
        save_array(sims_path(job.out_dir, "val", text=True), val_text)
    val_plain = recall_report(val_sim, val_text, n, None)["plain"]
    return {"val": val_plain, "test": test, "grid": grid, "choice": choice.to_dict(),
            "t2i_groups": job.t2i_groups, "text_sim": text_source,
            "captions_per_image": n_test if test else n}


def evaluate_target(
    trainer: PairTrainer, target: dict[str, PairedSplit], job: BranchJob
) -> dict[str, Any] | None:
    """R@K on the target domain (VSA-AE-MMD Table 1), or None without a scored target split.

    Plain R@1/5/10, medr, meanr and rsum over all images of the target's "test" split, and of
    its "val" split when it has one -- reported only: the epoch and K were selected on the
    SOURCE val split (target pairs are not available in unsupervised domain adaptation), and
    Table 1 does not re-rank. Writes ``sims/target_{test,val}.npy`` (image x caption scores).
    """
    scored = [s for s in ("test", "val") if s in target]
    if not scored:
        return None
    out: dict[str, Any] = {"uri": job.target_uri, "splits": {}}
    for name in scored:
        split = target[name]
        n = split.require_captions_per_image()
        sim = similarity_matrix(trainer.model, split, trainer.config.eval_chunk, device=trainer.device)
        if job.save_sims:
            save_array(sims_path(job.out_dir, f"target_{name}"), sim)
        out[name] = recall_at_k(sim, n, KS)
        out["splits"][name] = {"images": split.n_images, "captions_per_image": n}
    return out


def _history_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record[k] for k in ("epoch", "stage", "loss", "lr", "val_score", "is_best", "seconds")}
    row["epoch"] = int(row["epoch"]) + 1  # 1-based, as the progress rows and MLflow steps
    if "val_rsum" in record:
        row["val_rsum"] = record["val_rsum"]
    return row


def run_member(job: BranchJob, reporter: Reporter) -> BranchResult:
    """One member's training, as a Ray actor runs it (``distributed.actors.run_actors``); a
    restarted actor calls it again and the trainer resumes from its checkpoint. An object-storage
    ``out_dir`` is worked on in this node's mirror of it (store/remote.py), pulled first."""
    job = dataclasses.replace(job, out_dir=str(open_dir(job.out_dir)))
    if (checkpoint_dir(job.out_dir) / "last.pt").is_file():
        reporter.event(f"{job.label}: actor (pid {os.getpid()}) resumes from its checkpoint")
    return train_branch(job, progress=reporter.progress, event=reporter.event)
