"""One branch member: its spec (:class:`BranchSpec`), its result (:class:`BranchResult`), and the
function that trains and evaluates it, plain and re-ranked (no Ray inside).

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

What this module calls, each in its own module: ``splits`` (the member's splits, a target's
tokens remapped), ``checkpoints`` (``checkpoints/``: resume and save), ``member_scores`` (the
matrices under ``sims/`` and the R@K) and ``model_file`` (the ``model.pt`` format).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scalable_xmr import faults
from scalable_xmr.branch.checkpoints import MemberCheckpoints, checkpoint_dir, jsonable
from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.member_scores import evaluate_branch, evaluate_target
from scalable_xmr.branch.model_file import write_model_file
from scalable_xmr.branch.splits import read_splits
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.config import early_stop_note
from scalable_xmr.data.paired import PairedSplit
from scalable_xmr.distributed.progress import Reporter
from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_write_json, read_json
from scalable_xmr.models.registry import branch_config
from scalable_xmr.models.runtime import resolve_device
from scalable_xmr.store.remote import open_dir

EpochHook = Callable[[dict[str, Any]], None]
RESULT_FILE = "result.json"  # a member's result in its out_dir (BranchResult.write / read)
# result.json written before it recorded t2i_groups re-ranked T2I with the query's group G(T, K')
OLD_T2I_GROUPS = "query"


@dataclass(frozen=True)
class BranchSpec:
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
    # scores its chosen trial on test once, at its end (tuning/final_score.py).
    score_test: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.trainer, PairTrainerConfig):
            raise InputError(f"trainer: expected PairTrainerConfig, got {type(self.trainer).__name__}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise InputError(f"checkpoint_every must be an integer >= 1, got {self.checkpoint_every!r}")
        branch_config(self.trainer.model, self.model_config)  # unknown keys / bad values fail here

    @property
    def label(self) -> str:
        return self.name or self.trainer.model


@dataclass(frozen=True)
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: Any, source: str) -> BranchResult:
        """Check a parsed result.json; errors name ``source`` and the key. A file from before
        ``t2i_groups`` was recorded reads as :data:`OLD_T2I_GROUPS`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if not isinstance(values, dict):
            raise InputError(f"{source}: not a branch member's result.json (a JSON object)")
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in values]
        if missing:
            raise InputError(f"{source}: missing key {missing[0]!r}")
        return cls(**{"t2i_groups": OLD_T2I_GROUPS, **values})

    def write(self, out_dir: str | Path) -> None:
        """``<out_dir>/result.json`` (atomic)."""
        atomic_write_json(Path(out_dir) / RESULT_FILE, self.to_json())

    @classmethod
    def read(cls, out_dir: str | Path) -> BranchResult:
        """The result a member (or a sweep trial) left in ``out_dir``."""
        path = Path(out_dir) / RESULT_FILE
        return cls.from_json(read_json(path), str(path))

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


def _epoch_hook(job: BranchSpec, trainer: PairTrainer, ckpt: MemberCheckpoints, progress, on_epoch):
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


def _save_model(job: BranchSpec, trainer: PairTrainer, split: PairedSplit, model_config: dict) -> None:
    best = {s: (None if b is None else b["epoch"]) for s, b in trainer.best.items()}
    text_dim = split.text_dim if trainer.train_data.texts.is_floating_point() else None
    write_model_file(Path(job.out_dir) / "model.pt", job.trainer.model, trainer.model.state_dict(),
                     model_config, asdict(job.trainer), split.vocab_size, list(split.images.shape[1:]),
                     text_dim, best)


def train_branch(
    job: BranchSpec, progress: EpochHook | None = None, on_epoch: EpochHook | None = None,
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
    splits, target = read_splits(job.dataset_uri, job.target_uri, job.score_test)
    model_cfg = branch_config(job.trainer.model, job.model_config)
    # Epochs are selected on the SOURCE val split: in unsupervised domain adaptation the target's
    # pairing is "unknown at training time" (VSA-AE-MMD §3); the target only reports (Table 1).
    trainer = PairTrainer(job.trainer, model_cfg, splits["train"], splits["val"], device,
                          target_split=target.get("train"))
    model_config = jsonable(asdict(trainer.model.config)) if hasattr(trainer.model, "config") else {}
    ckpt = MemberCheckpoints(job.out_dir, {"trainer": asdict(job.trainer), "model_config": model_config,
                                           "dataset_uri": job.dataset_uri, "target_uri": job.target_uri})
    ckpt.resume(trainer)
    if ckpt.recovered_from and event is not None:
        event(f"{job.label}: {ckpt.recovered_from}; resumed from the checkpoint before it")
    trainer.fit(on_epoch=_epoch_hook(job, trainer, ckpt, progress, on_epoch))
    train_seconds = time.perf_counter() - start
    _save_model(job, trainer, splits["train"], model_config)
    sims_dir = str(job.out_dir) if job.save_sims else None
    evaluation = evaluate_branch(trainer, splits, job.ks, job.k_texts, job.t2i_groups, sims_dir)
    evaluation["target"] = evaluate_target(trainer, target, job.target_uri, sims_dir)
    result = BranchResult(
        name=job.label, model=job.trainer.model, seed=job.trainer.seed, out_dir=str(job.out_dir),
        history=[_history_row(r) for r in trainer.history],
        best_epoch={s: (None if b is None else b["epoch"] + 1) for s, b in trainer.best.items()},
        trainer_config=asdict(job.trainer), model_config=model_config,
        resumed_at_epoch=list(ckpt.resumed_at), train_seconds=train_seconds, device=str(device),
        pid=os.getpid(), stopped_early=dict(trainer.stopped_early), **evaluation,
    )
    result.write(job.out_dir)
    return result


def _history_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record[k] for k in ("epoch", "stage", "loss", "lr", "val_score", "is_best", "seconds")}
    row["epoch"] = int(row["epoch"]) + 1  # 1-based, as the progress rows and MLflow steps
    if "val_rsum" in record:
        row["val_rsum"] = record["val_rsum"]
    return row


def run_member(job: BranchSpec, reporter: Reporter) -> BranchResult:
    """One member's training, as a Ray actor runs it (``distributed.actors.run_actors``); a
    restarted actor calls it again and the trainer resumes from its checkpoint. An object-storage
    ``out_dir`` is worked on in this node's mirror of it (store/remote.py), pulled first."""
    job = dataclasses.replace(job, out_dir=str(open_dir(job.out_dir)))
    if (checkpoint_dir(job.out_dir) / "last.pt").is_file():
        reporter.event(f"{job.label}: actor (pid {os.getpid()}) resumes from its checkpoint")
    return train_branch(job, progress=reporter.progress, event=reporter.event)
