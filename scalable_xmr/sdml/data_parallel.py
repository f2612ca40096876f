"""One SDML modality trained by W data-parallel workers (DDP) that give one process's result.

Each rank is a :class:`ModalityTrainer` (the same network, Adam, batch order, selection, patience,
NaN guard and outputs) that changes four things:

- ``batches``: every rank draws the single-process permutation (same seed, same generator) and
  takes its contiguous slice ``shard_bounds(b, rank, W)`` of each global batch of ``b`` rows;
- ``loss``/``backward``: the rank's share of SDML Eq. (1) over the global batch's counts, scaled by
  W so that DDP's gradient average is the single-process gradient (derivation below);
- ``epoch_sums``/``val_label_loss``: the epoch's loss sums and the validation label loss are summed
  over the ranks (all-reduce), so every rank takes the same selection, patience and NaN decisions;
- checkpoints go to Ray Train (rank 0 writes our checksummed file, ``report`` persists it) and a
  restarted worker group resumes from the latest one; rank 0 writes model.pt and the embeddings
  from the unwrapped module, so search, serve and resume read the files they read today.

Every rank holds the whole modality in memory (in-memory path, issue #26's first step) and fits
the input standardisation over the whole train split, so every rank has the same statistics and
model.pt stores them as ModalityTrainer does. The Ray side (TorchTrainer, report, get_checkpoint)
is in distributed/ray_train.py; here, torch.distributed only.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from scalable_xmr import faults
from scalable_xmr.distributed.ray_train import WorkerGroup, run_workers
from scalable_xmr.errors import InputError
from scalable_xmr.functional.losses import label_loss_sum, sdml_loss_share
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import (
    EpochStats,
    ModalityTrainer,
    TrainResult,
    retain_freed_memory,
    train_epochs,
)
from scalable_xmr.store import remote, torchfile
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.store.training_state import LAST, RAY_TRAIN_DIR
from scalable_xmr.uris import scheme

T = TypeVar("T")
FAULT_GRACE_S = 2.0  # tests only: an injected fault waits for the controller to take the report in


class RankContext(Protocol):
    """What a rank gets from its launcher (distributed/ray_train.py's ``RayRankContext``)."""

    rank: int
    world_size: int
    device: str

    def load_checkpoint(self, loader: Callable[[Path], T]) -> T | None:
        """``loader(directory)`` of the latest reported checkpoint, or None when there is none."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Every rank, the same number of times (a barrier); rank 0's metrics are kept."""


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [lo, hi) of ``n`` that ``rank`` of ``world_size`` takes: contiguous slices in rank
    order; when ``n`` is not a multiple of W, the first ``n mod W`` ranks take one row more.

    >>> [shard_bounds(10, r, 4) for r in range(4)]
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    q, extra = divmod(n, world_size)
    lo = rank * q + min(rank, extra)
    return lo, lo + q + (rank < extra)


class RankTrainer(ModalityTrainer):
    """One rank of a data-parallel modality: a ModalityTrainer over its slice of each batch."""

    def __init__(self, job: ModalitySpec, ctx: RankContext):
        super().__init__(job, resume=False)  # Ray Train keeps this run's checkpoints
        self.ctx, self.rank, self.world = ctx, ctx.rank, ctx.world_size
        self.lo, self.hi = shard_bounds(self.cfg.batch_size, self.rank, self.world)
        # DDP's constructor broadcasts rank 0's weights; every rank built the same ones (same seed).
        # Buffers (the standardisation) are equal on every rank and never change: not broadcast.
        self.net = self.model if self.world == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
            forward_sync_buffers=False)
        self.pending: Path | None = None  # rank 0's checkpoint directory, until it is reported
        self.fault_name = f"{job.modality}/rank{self.rank}"  # tests only: scalable_xmr/faults.py
        self.marker_dir = self.store.checkpoint_path(job.modality).parent
        state = ctx.load_checkpoint(lambda d: torchfile.load(d / LAST, self.device))
        if state is not None:
            self.restore(state, f"Ray Train checkpoint of {job.modality!r}")

    # ---- one epoch -----------------------------------------------------------------------------
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This rank's slice of each of the epoch's global batches, with the global batch's
        labeled count: ``(x (b_r, dim), y (b_r, c), n_labeled ())`` per step.

        The permutation is ModalityTrainer.batches's (same generator, one ``randperm`` an epoch),
        so the global batches are the single-process ones. Every rank holds all labels, so the
        labeled count of a global batch is computed here without an all-reduce (a streaming
        path, where a rank sees only its rows, must all-reduce it).
        """
        retain_freed_memory()
        n, b = len(self.x["train"]), self.cfg.batch_size
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        steps = n // b  # the last partial batch is dropped, as in one process
        rows = perm[: steps * b].view(steps, b)  # (steps, b): the global batches
        n_labeled = (self.data.labels["train"][rows].sum(-1) > 0).sum(1)  # (steps,)
        mine = rows[:, self.lo : self.hi].reshape(-1)  # (steps * b_r,)
        x = self.x["train"][mine].view(steps, self.hi - self.lo, -1)  # (steps, b_r, dim)
        y = self.data.labels["train"][mine].view(steps, self.hi - self.lo, -1)  # (steps, b_r, c)
        return [(x[s], y[s], n_labeled[s]) for s in range(steps)]

    def loss(self, x: torch.Tensor, y: torch.Tensor, n_labeled: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's share of the global batch's SDML loss (its terms add up over the ranks)."""
        h, x_hat = self.net(x)
        return sdml_loss_share(x_hat, x, h, self.P, y, self.cfg.lam, self.cfg.batch_size, n_labeled)

    def backward(self, total: torch.Tensor) -> None:
        # SDML Eq. (1) on a mini-batch B of b rows (Algorithm 1, with L_B of the labeled rows):
        #   J = λ/b · Σ_{j∈B} ‖x̂_j − x_j‖₂ + (1−λ)/|L_B| · Σ_{j∈L_B} ‖Pᵀh_j − y_j‖₂.
        # Rank r holds B_r (the B_r partition B), and ``total`` is its share J_r: the same sums over
        # B_r with the same global denominators b and |L_B|, so Σ_r J_r = J and Σ_r ∂J_r = ∂J
        # (Eq. 3's gradient). DDP all-reduces the gradients and divides by W: backpropagating
        # W·J_r gives (1/W) Σ_r W·∂J_r = ∂J, one process's gradient on the whole batch.
        (total * self.world).backward()
        faults.crash_mid_epoch(self.fault_name, self.epoch + 1, self.marker_dir, grace_s=FAULT_GRACE_S)

    def epoch_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """The epoch's loss sums over every rank's shares: the single-process sums, on every rank
        (so the NaN guard stops all ranks or none)."""
        if self.world > 1:
            dist.all_reduce(sums)
        return sums

    @torch.no_grad()
    def val_label_loss(self) -> float:
        """The single process's validation label loss: each rank sums over its slice of the val
        split, the sums and labeled counts are all-reduced, and every rank divides the same two
        numbers (selection and patience are then the same decision on every rank)."""
        self.model.eval()
        lo, hi = shard_bounds(len(self.x["val"]), self.rank, self.world)
        total, count = label_loss_sum(self.model.encode_normalized, self.x["val"][lo:hi],
                                      self.data.labels["val"][lo:hi], self.P)
        self.model.train()
        return self.reduced_mean(total, count)

    def reduced_mean(self, total: torch.Tensor, count: torch.Tensor) -> float:
        """Σ_ranks total / Σ_ranks count, the same number on every rank."""
        both = torch.stack([total, count.to(total.dtype)])
        if self.world > 1:
            dist.all_reduce(both)
        return float(both[0] / both[1].clamp_min(1))

    # ---- checkpoints and the loop --------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Rank 0 writes the checksummed training state into a fresh directory; ``report_epoch``
        hands it to Ray Train (which persists it) and removes it."""
        if self.rank == 0:
            self.pending = Path(tempfile.mkdtemp(prefix=f"xmr-{self.job.modality}-ckpt-"))
            torchfile.save(self.checkpoint_state(), self.pending / LAST)

    def report(self, metrics: dict[str, Any]) -> None:
        """``report`` (every rank: a barrier) with rank 0's pending checkpoint, if any."""
        try:
            self.ctx.report(metrics, self.pending)
        finally:
            if self.pending is not None:
                shutil.rmtree(self.pending, ignore_errors=True)
                self.pending = None

    def report_epoch(self, stats: EpochStats, checkpointed: bool) -> None:
        """Every epoch but the last, every rank: ``report`` with rank 0's checkpoint when one was
        written; then the test suite's fault hooks (scalable_xmr/faults.py, task ``<m>/rank<r>``;
        ``<m>/rank<r>/mid-epoch`` fires in :meth:`backward` instead).
        The last epoch's checkpoint goes with the result (:meth:`run`): Ray Train keeps only the
        metrics that come with a checkpoint."""
        if self.done:
            return
        self.report({"epoch": stats.epoch, "loss/train": stats.loss_train,
                     "loss/val_label": stats.loss_val_label, "best_epoch": self.best_epoch})
        if checkpointed:
            faults.crash_after_checkpoint(self.fault_name, self.epoch, self.cfg.epochs, self.marker_dir,
                                          grace_s=FAULT_GRACE_S)
            faults.hold_after_checkpoint(self.fault_name, self.epoch)

    def final_metrics(self, seconds: float) -> dict[str, Any]:
        """What the last report carries: the job's :class:`TrainResult` (a sweep trial's rank
        reports its last epoch's scores instead, tuning/sdml_workers_trial.py)."""
        return {"result": dataclasses.asdict(self.result(seconds))}

    def run(self) -> None:
        """Train to the end (or patience); rank 0 writes the selected model and outputs; then the
        last report (a barrier: model.pt is written before the run ends) carries the final
        checkpoint and :meth:`final_metrics`."""
        start = time.perf_counter()
        train_epochs(self, self.report_epoch, checkpoint_at_end=True)
        if self.rank == 0:
            self.write_outputs()
            if self.pending is None:  # resumed from the final checkpoint: nothing was trained
                self.save_checkpoint()
        self.report(self.final_metrics(time.perf_counter() - start))


@dataclasses.dataclass(frozen=True)
class Ingest:
    """What each worker runs, ``fn(job, ctx)`` or ``fn((job, plan), ctx)``, and the datasets it
    streams (none: it holds the modality in memory)."""

    fn: Callable[[Any, Any], None]
    plan: Any = None  # what the driver prepared for every rank besides the job
    datasets: dict[str, Any] | None = None  # Ray Data datasets by name (distributed/ray_data.py)
    data_config: Any = None  # how Ray Train splits and limits them

    def payload(self, job: ModalitySpec) -> Any:
        return job if self.plan is None else (job, self.plan)


def train_rank(job: ModalitySpec, ctx: RankContext) -> None:
    """What each of the W workers runs (on its own device)."""
    RankTrainer(dataclasses.replace(job, device=ctx.device), ctx).run()


def train_modality_parallel(job: ModalitySpec, workers: int, *, ingest: Ingest | None = None,
                            **options: Any) -> TrainResult:
    """Train ``job``'s modality with ``workers`` DDP ranks (Ray Train), as one process would
    (:func:`run_modality_parallel` with ``ingest``, by default :func:`train_rank` on the modality
    held in memory; ``options`` its keywords)."""
    metrics = run_modality_parallel(job, workers, ingest or Ingest(train_rank), **options)
    return TrainResult(**metrics["result"])


def run_modality_parallel(job: ModalitySpec, workers: int,
                          ingest: Ingest | Callable[[ModalitySpec, RankContext], None], *,
                          use_gpu: bool = False, resources_per_worker: dict[str, float] | None = None,
                          storage_path: str | None = None, max_failures: int = 2,
                          start_timeout_s: float = 60.0, poll_interval_s: float = 0.25,
                          callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """``ingest.fn`` on ``workers`` DDP ranks (Ray Train); the metrics of rank 0's last report.

    ``ingest`` is an :class:`Ingest` or just the function each rank runs, ``fn(job, ctx)``:
    :func:`train_rank` or another module-level function that runs a :class:`RankTrainer` (a sweep
    trial's, whose ``callbacks`` hand every report to Tune).
    ``storage_path`` (absolute, or a URI) holds Ray Train's run ``ray-train`` and its checkpoints;
    by default the modality's ``checkpoints/`` folder in the run store (``s3://.../checkpoints`` for
    a run on object storage). Running again with the same storage
    resumes from the latest checkpoint. ``max_failures`` worker-group restarts are allowed; a
    worker group that cannot start within ``start_timeout_s`` fails the run; ``poll_interval_s``: how
    often Ray Train's controller takes in reports (``WorkerGroup``). Torch threads per
    worker: ``job.num_threads``, else the whole CPUs of ``resources_per_worker`` (at least one).
    ``ingest``: what the workers run and read; by default :func:`train_rank` on the whole
    modality in memory (sdml/streaming.py's streams it through Ray Data).
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InputError(f"workers must be a whole number >= 1, got {workers!r}")
    if workers > job.config.batch_size:
        raise InputError(f"workers ({workers}) must not exceed the batch size ({job.config.batch_size}): "
                         "each worker takes a slice of every batch")
    cpus = (resources_per_worker or {}).get("CPU", 1.0)
    job = dataclasses.replace(job, num_threads=job.num_threads or max(1, int(cpus)))
    if storage_path is None:
        # The modality's checkpoints/, which every node must reach: a local run's folder (shared
        # storage on a cluster), an object-storage run's key in the bucket (not its mirror here,
        # which Ray Train refuses once rank 0 runs on another node).
        checkpoints = RunStore(job.run_dir, modality=job.modality, pull=False).checkpoint_path(job.modality)
        storage_path = remote.uri_of(checkpoints.parent.resolve())
    if scheme(storage_path) is None and not os.path.isabs(storage_path):
        raise InputError(f"storage_path must be absolute (Ray Train workers run elsewhere), "
                         f"got {storage_path!r}")
    group = WorkerGroup(workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker,
                        max_failures=max_failures, start_timeout_s=start_timeout_s,
                        poll_interval_s=poll_interval_s)
    if not isinstance(ingest, Ingest):
        ingest = Ingest(ingest)
    return run_workers(ingest.fn, ingest.payload(job), group, name=RAY_TRAIN_DIR, storage_path=storage_path,
                       user_errors=(InputError,), callbacks=callbacks, datasets=ingest.datasets,
                       data_config=ingest.data_config)
