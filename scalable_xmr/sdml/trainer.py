"""One modality's SDML training loop: a plain class, no Ray and no MLflow inside.

``ModalityTrainer`` loads its own modality's splits and P from storage (no big objects travel
through a driver), keeps the data as tensors on its device, trains with SDML Algorithm 1, writes an
atomic checkpoint every few epochs, resumes from the last one when it exists (this is how a Ray
actor restarted after a fault continues), selects the epoch with the lowest validation label loss,
stops early when ``patience`` epochs in a row bring no lower one (``config.patience_exhausted``; off
by default), and writes its best model, its val/test embeddings and a training log to the run store.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from scalable_xmr import faults
from scalable_xmr.config import SDMLConfig, early_stop_note, patience_exhausted
from scalable_xmr.distributed.progress import Reporter
from scalable_xmr.errors import InputError
from scalable_xmr.functional.losses import mean_label_loss, sdml_loss
from scalable_xmr.models.runtime import make_adam
from scalable_xmr.models.sdml import SDMLAutoencoder
from scalable_xmr.sdml.modality_spec import ModalitySpec, spec_context
from scalable_xmr.sdml.outputs import write_run_outputs
from scalable_xmr.store import torchfile
from scalable_xmr.store.meta import now_iso

SDML_BETAS = (0.5, 0.999)  # Adam's betas in the SDML reference code
ProgressFn = Callable[[dict[str, Any]], None]
EpochHook = Callable[["EpochStats", bool], None]  # (this epoch's stats, whether it was checkpointed)


@dataclass
class EpochStats:
    epoch: int
    loss_train: float
    loss_recon: float
    loss_label: float
    loss_val_label: float
    seconds: float


@dataclass
class TrainResult:
    modality: str
    best_epoch: int
    best_val_label: float
    epochs: int
    resumed_at_epoch: list[int] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    device: str = "cpu"
    pid: int = 0
    planned_epochs: int = 0  # the config's epochs (``epochs`` is fewer when patience stopped it)
    patience: int | None = None
    stopped_early: int | None = None  # the epoch patience stopped training at (None: ran them all)

    def footer_note(self) -> str | None:
        """The job footer's line on this modality's epochs (``config.early_stop_note``)."""
        scores = [h["loss_val_label"] for h in self.history]
        return early_stop_note(self.modality, self.planned_epochs or self.epochs, self.best_epoch, scores,
                               higher_is_better=False, patience=self.patience, stopped_at=self.stopped_early)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@functools.cache
def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS; once per process.

    Every step frees and re-allocates the same tens of MB (gradients, activations). By default
    glibc serves big blocks with fresh mmap()s and trims the heap back to the OS, so each step
    page-faults those MB in again: 5,000-9,000 faults a step for the 4096-d network, which makes
    a CPU step ~20% slower (bench/train_speed.py, section 2). A 1 GiB mmap threshold and no
    trimming keep the memory mapped; the price is that the process stays at its peak resident
    size. Returns False where it cannot apply (not glibc). CUDA tensors do not come from malloc,
    so on a GPU this changes nothing.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - a glibc system without the usual soname
        return False
    # glibc < 2.35 refuses thresholds above 32 MiB; fall back to the largest it accepts.
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(_M_MMAP_THRESHOLD, 1 << 25)
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # the largest C int: never trim
    return bool(mmap_ok and trim_ok)


def modality_seed(cfg: SDMLConfig, modality: str) -> int:
    """The seed of one modality's network init and batch order (a population slot uses the same)."""
    return cfg.seed * 1_000_003 + zlib.crc32(modality.encode())


def train_epochs(trainer: Any, on_epoch: Callable[[Any, bool], None] | None, checkpoint_at_end: bool,
                 after_checkpoint: Callable[[], None] | None = None) -> None:
    """The epoch loop of :class:`ModalityTrainer` and of a population (sdml/population.py):
    train until ``trainer.done`` (``cfg.epochs``, or patience ran out; a resumed trainer
    continues), record each epoch, checkpoint every ``checkpoint_every`` epochs and, unless
    ``checkpoint_at_end`` is False (a sweep trial, which nothing resumes once it has ended), at
    the last; then ``on_epoch(stats, checkpointed)``."""
    cfg = trainer.cfg
    while not trainer.done:
        stats = trainer.train_epoch()
        trainer.record(stats)
        epoch = trainer.epoch
        checkpointed = (checkpoint_at_end and trainer.done) or epoch % cfg.checkpoint_every == 0
        if checkpointed:
            trainer.save_checkpoint()
            if after_checkpoint is not None:
                after_checkpoint()
        if on_epoch is not None:
            on_epoch(stats, checkpointed)


def improves(val_label: float, best_val: float) -> bool:
    """Model selection (SDML §4.2 as the reference code does it): keep the epoch with the lowest
    validation label loss; a tie keeps the earlier epoch."""
    return val_label < best_val


def stored_config(values: Any) -> Any:
    """A config dict as a checkpoint stored it, with the defaults of SDMLConfig fields added
    since (``patience``) filled in, so a training started before them resumes."""
    if not isinstance(values, dict):
        return values
    return {**{f.name: f.default for f in fields(SDMLConfig)}, **values}


class ModalityTrainer:
    """Trains one modality's supervised autoencoder against the fixed P (SDML Algorithm 1)."""

    def __init__(self, job: ModalitySpec, progress: ProgressFn | None = None, *, resume: bool = True):
        """``resume=False``: start fresh whatever the run store holds (a data-parallel rank,
        whose checkpoints Ray Train keeps, restores with :meth:`restore` instead)."""
        self.job, self.cfg, self.progress = job, job.config, progress
        self.device, self.store, self.P, self.data = spec_context(job, load_data=self.reads_splits)
        seed = modality_seed(self.cfg, job.modality)
        torch.manual_seed(seed)
        self.model = SDMLAutoencoder(self.input_dim(), self.cfg.dim, self.cfg.hidden).to(self.device)
        self.x = self.standardise()
        self.optimizer = make_adam(self.model.parameters(), self.cfg.lr_for(job.modality), SDML_BETAS)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.epoch = 0
        self.best_val, self.best_epoch = float("inf"), 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self.resumed_at: list[int] = []
        self.stopped_early: int | None = None  # the epoch patience ran out at (config.patience_exhausted)
        self.outputs_written = False
        self.recovered_from: str | None = None  # why the newest checkpoint was skipped on resume
        if resume:
            self._resume()

    reads_splits = True  # False: a streaming rank reads its rows batch by batch (sdml/streaming.py)

    def input_dim(self) -> int:
        return self.data.input_dim

    def standardise(self) -> dict[str, torch.Tensor]:
        """Fit the input standardisation on the train split and standardise each split once (the
        normaliser's buffers still travel with the model)."""
        if self.cfg.normalize:
            self.model.fit_normalizer(self.data.features["train"])
        return {s: self.model.normalize(f) for s, f in self.data.features.items()}

    def n_train(self) -> int:
        return len(self.x["train"])

    @property
    def done(self) -> bool:
        """Trained every epoch of the config, or stopped early by its patience."""
        return self.epoch >= self.cfg.epochs or self.stopped_early is not None

    # ---- one epoch -----------------------------------------------------------------------------
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's shuffled batches (views into one gathered copy; last partial dropped).

        The copy is gathered into the same buffers every epoch (no fresh 4000 x 4096 allocation to
        page-fault in); the previous epoch's batches are dead by the time the next epoch asks. Every
        training loop (``train_epoch``, ``JointTrainer``) starts its epoch here, so this is also where
        glibc is told to keep freed memory (``retain_freed_memory``, once per process).
        """
        retain_freed_memory()
        n, b = len(self.x["train"]), self.cfg.batch_size
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        x_all, y_all = self.x["train"], self.data.labels["train"]
        buffers = getattr(self, "_shuffled", None)
        if buffers is None:
            buffers = self._shuffled = (torch.empty_like(x_all), torch.empty_like(y_all))
        x = torch.index_select(x_all, 0, perm, out=buffers[0])  # (n, dim): one gather per epoch
        y = torch.index_select(y_all, 0, perm, out=buffers[1])  # (n, c)
        return [(x[i : i + b], y[i : i + b]) for i in range(0, n - b + 1, b)]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, x_hat = self.model(x)
        return sdml_loss(x_hat, x, h, self.P, y, self.cfg.lam)

    @torch.no_grad()
    def val_label_loss(self) -> float:
        """Mean ‖Pᵀh − y‖₂ over labeled validation rows: the model-selection criterion. The val
        embeddings it computed stay in ``val_embeddings`` (a sweep trial scores them)."""
        self.model.eval()
        chunks: list[torch.Tensor] = []
        loss = mean_label_loss(self.model.encode_normalized, self.x["val"], self.data.labels["val"], self.P,
                               keep=chunks)
        self.model.train()
        self.val_embeddings = torch.cat(chunks)  # (n_val, d), L2-normalised
        return float(loss)

    def train_epoch(self) -> EpochStats:
        """One pass over the shuffled train split (SDML Algorithm 1's inner loop) + validation.

        Kept lean for speed: no per-step copies (batches are views), no per-step host sync (the loss
        sums stay on the device), gradients freed before the forward pass (set_to_none) so its
        activations reuse their memory, fused Adam, and glibc told to keep freed memory (see
        ``batches``).
        """
        start = time.perf_counter()
        self.outputs_written = False
        self.model.train()
        sums = torch.zeros(3, device=self.device)
        batches = self.batches()
        if not batches:
            raise InputError(
                f"modality {self.job.modality!r}: train split has {self.n_train()} rows, "
                f"fewer than one batch of {self.cfg.batch_size}"
            )
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            total, recon, label = self.loss(*batch)
            self.backward(total)
            self.optimizer.step()
            sums += torch.stack([total.detach(), recon.detach(), label.detach()])
        self.epoch += 1
        means = (self.epoch_sums(sums) / len(batches)).tolist()  # one host sync per epoch
        bad = [term for term, v in zip(("total", "reconstruction", "label"), means, strict=True)
               if not math.isfinite(v)]
        if bad:  # stop here: checkpointing NaN weights would only spread them
            terms = [t for t in bad if t != "total"] or ["total"]
            what = f"{' and '.join(terms)} loss{'es are' if len(terms) > 1 else ' is'}"
            raise InputError(f"modality {self.job.modality!r}: the {what} not finite at epoch "
                             f"{self.epoch} (lr {self.optimizer.param_groups[0]['lr']:g}); lower --lr, check "
                             "the inputs, or resume from the last checkpoint")
        return EpochStats(self.epoch, *means, self.val_label_loss(), time.perf_counter() - start)

    def backward(self, total: torch.Tensor) -> None:
        """Gradients of one batch's loss (a data-parallel rank scales its share first)."""
        total.backward()

    def epoch_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """The epoch's (total, recon, label) loss sums over its batches (a data-parallel rank adds
        up every rank's share here)."""
        return sums

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self, on_epoch: EpochHook | None = None, checkpoint_at_end: bool = True) -> TrainResult:
        """Train to ``cfg.epochs`` or until ``cfg.patience`` runs out (resumed runs continue), then
        write the selected model and outputs.

        The loop is :func:`train_epochs` (``on_epoch(stats, checkpointed)`` after each epoch: a
        sweep trial scores and reports there); the job and the sweep trial run it alike. Outputs
        are written at the end unless the hook already wrote them for the last epoch
        (:meth:`write_outputs`).
        """
        start = time.perf_counter()

        def injected_fault() -> None:  # tests only: scalable_xmr/faults.py
            faults.crash_after_checkpoint(self.job.modality, self.epoch, self.cfg.epochs,
                                          self.store.checkpoint_path(self.job.modality).parent)
            faults.hold_after_checkpoint(self.job.modality, self.epoch)

        train_epochs(self, on_epoch, checkpoint_at_end, injected_fault)
        if not self.outputs_written:
            self.write_outputs()
        return self.result(time.perf_counter() - start)

    def record(self, stats: EpochStats) -> None:
        row = {k: float(v) for k, v in vars(stats).items()}
        self.history.append(row)
        if improves(stats.loss_val_label, self.best_val):
            self.best_val, self.best_epoch = stats.loss_val_label, stats.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._check_patience()
        if self.progress is not None:
            status = (f"loss {stats.loss_train:.4f} | val label {stats.loss_val_label:.4f} "
                      f"(best ep {self.best_epoch}{', stopped early' if self.stopped_early else ''})")
            self.progress({"name": self.job.modality, "modality": self.job.modality,
                           "epochs": self.cfg.epochs, "best_epoch": self.best_epoch, **row, "status": status})

    def _check_patience(self) -> None:
        """Stop early once patience runs out before the last epoch (after a resume too: the
        epochs since the selected one come back with the checkpoint's epoch and best epoch)."""
        cfg = self.cfg
        if self.epoch < cfg.epochs and patience_exhausted(self.epoch, self.best_epoch, cfg.patience):
            self.stopped_early = self.epoch

    def result(self, seconds: float) -> TrainResult:
        return TrainResult(
            modality=self.job.modality, best_epoch=self.best_epoch, best_val_label=self.best_val,
            epochs=self.epoch, resumed_at_epoch=list(self.resumed_at), history=list(self.history),
            train_seconds=seconds, device=str(self.device), pid=os.getpid(),
            planned_epochs=self.cfg.epochs, patience=self.cfg.patience, stopped_early=self.stopped_early,
        )

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        torchfile.save_rotating(self.checkpoint_state(), self.store.checkpoint_path(self.job.modality))

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume continues from exactly: weights, Adam, epoch, the batch-order RNG,
        the selection so far and the config it was trained with."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": self.history,
            "resumed_at": self.resumed_at,
            "config": self.cfg.to_dict(),
        }

    def _resume(self) -> None:
        path = self.store.checkpoint_path(self.job.modality)
        if not path.is_file() and not torchfile.previous(path).is_file():
            return
        # A corrupt newest checkpoint falls back to the one before it (said in recovered_from).
        state, _, self.recovered_from = torchfile.load_newest_good(path, self.device)
        self.restore(state, str(path))

    def restore(self, state: dict[str, Any], source: str) -> None:
        """Continue from ``state`` (:meth:`checkpoint_state`, read from ``source``)."""
        if stored_config(state.get("config")) != self.cfg.to_dict():
            # A checkpoint from other hyperparameters must not be continued silently.
            raise InputError(
                f"{source}: checkpoint was written with another config {state.get('config')}; "
                "delete it or use the same settings"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.epoch = int(state["epoch"])
        self.best_val, self.best_epoch = float(state["best_val"]), int(state["best_epoch"])
        self.best_state = state["best_state"]
        self.history = list(state["history"])
        self.resumed_at = [*state.get("resumed_at", []), self.epoch]
        self._check_patience()  # a checkpoint of the epoch that ran out of patience: nothing to train

    # ---- outputs -------------------------------------------------------------------------------
    def write_outputs(self) -> None:
        """Best model, the embeddings of the job's ``eval_splits`` and the training log, each
        written atomically."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.outputs_written = True
        write_run_outputs(self.store, self.job, self.model, self.cfg, self.best_epoch, self.data,
                          self.train_log())

    def train_log(self) -> dict[str, Any]:
        """``train_log.json``: the selection, the epochs and their history."""
        return {
            "modality": self.job.modality, "best_epoch": self.best_epoch, "best_val_label": self.best_val,
            "epochs": self.epoch, "resumed_at_epoch": self.resumed_at, "history": self.history,
            "input_dim": self.input_dim(), "n_train": self.n_train(),
            "patience": self.cfg.patience, "stopped_early": self.stopped_early,
            "finished": now_iso(),
        }


def train_modality(job: ModalitySpec, reporter: Reporter) -> TrainResult:
    """One modality's whole training, as a Ray actor runs it (``distributed.actors.run_actors``).

    A restarted actor calls this again with the same job: the trainer resumes from the last
    checkpoint in the run store, and the driver is told.
    """
    trainer = ModalityTrainer(job, reporter.progress)
    if trainer.recovered_from:
        reporter.event(f"{job.modality}: {trainer.recovered_from}; resumed from the checkpoint before it")
    if trainer.resumed_at:
        reporter.event(f"{job.modality}: actor (pid {os.getpid()}) resumed from its checkpoint at epoch "
                       f"{trainer.epoch}")
    return trainer.fit()
