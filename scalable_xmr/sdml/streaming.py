"""One SDML modality streamed from its Parquet table by W Ray Train workers (``xmr train --stream``).

A :class:`StreamRankTrainer` is a data-parallel rank (sdml/data_parallel.py: the same network,
loss shares, all-reduced sums, selection, checkpoints and outputs) that never holds the table:

- the driver makes one streamed pass over the train split for the input standardisation (float64
  per-block moments, combined: distributed/ray_data.py ``feature_moments``) and hands the workers
  the mean and variance, so every rank standardises with the statistics of the whole split;
- each epoch a rank reads its share of the train split (Ray Data ``streaming_split``, equal shares)
  in batches of its slice of the global batch, rows mixed in a local buffer seeded by
  :func:`shuffle_seed` (seed, epoch, rank); the file order is reseeded every epoch;
- every rank takes :func:`stream_steps` steps (the same number, for DDP), the global batch's
  labelled count is all-reduced each step (a rank sees only its rows); rows past the last whole
  global batch are read and dropped, as one process drops its last partial batch;
- the validation label loss: each rank streams the val split from the table (pyarrow's scanner, a
  batch at a time: no Ray Data execution an epoch for a small split) and encodes every W-th batch,
  the sums are all-reduced; rank 0 streams val and test once more for the embeddings it writes.

With W = 1 the rank runs in the modality's actor instead (:class:`ActorStream`, as the in-memory
W = 1 does: no TorchTrainer, whose controller and helper actors alone hold ~0.85 GiB on a node,
BENCHMARKS.md "Streaming a modality"): the actor iterates the train split with Ray Data itself and
keeps its checkpoints where the in-memory actor keeps them (``last.pt`` and the one before).

What is reproducible: a fixed W, seed and table give the same batches, so the same run (blocks
keep their order through the split: ``preserve_order``). A different W gives other batches (other
shares, other buffers): not the same numbers, the same training. A resume continues from the last
epoch's checkpoint (mid-epoch resume of a stream is not supported, ray#37633) with the file orders
of a fresh start, so epochs after a resume are shuffled otherwise than an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from scalable_xmr.config import IngestLimits
from scalable_xmr.data.filesystem import resolve_uri
from scalable_xmr.data.modality.dataset import SplitData, open_dataset
from scalable_xmr.distributed.logs import quiet_ray_data
from scalable_xmr.distributed.progress import Reporter
from scalable_xmr.distributed.ray_data import (
    TRAIN,
    data_config,
    execution_options,
    feature_moments,
    split_dataset,
)
from scalable_xmr.errors import InputError
from scalable_xmr.functional.losses import label_loss_sum
from scalable_xmr.io import atomic_write_json
from scalable_xmr.models.runtime import resolve_device
from scalable_xmr.sdml.data_parallel import Ingest, RankContext, RankTrainer, train_modality_parallel
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.outputs import model_payload
from scalable_xmr.sdml.trainer import TrainResult, modality_seed, retain_freed_memory
from scalable_xmr.store import torchfile
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.store.training_state import LAST

T = TypeVar("T")
EVAL_BATCH = 1024  # rows a val/test batch: encoding only, memory ~ rows x dim x 4 B


class StreamContext(RankContext, Protocol):
    """A rank's context with its streamed train split (distributed/ray_train.py ``RayRankContext``)."""

    def train_batches(self, name: str, batch_size: int, *, shuffle_buffer: int | None = None,
                      shuffle_seed: int | None = None) -> Iterable[dict[str, torch.Tensor]]:
        """This rank's share of ``name`` for one epoch (``x``, ``y`` tensors on its device)."""


@dataclass(frozen=True)
class StreamPlan:
    """What the driver learnt from its pass over the train split, for every rank."""

    n_train: int
    input_dim: int
    mean: np.ndarray = field(repr=False)  # (dim,) float64
    var: np.ndarray = field(repr=False)  # (dim,) float64, population variance
    shuffle_rows: int  # each rank's local shuffle buffer
    eval_batch: int = EVAL_BATCH


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """The local shuffle seed of ``rank``'s ``epoch`` (0-based): the same for the same three (a
    resumed run re-derives it), different for any other rank or epoch.

    >>> shuffle_seed(7, 0, 0) == shuffle_seed(7, 0, 0), shuffle_seed(7, 0, 0) == shuffle_seed(7, 0, 1)
    (True, False)
    """
    return zlib.crc32(f"xmr-stream/{seed}/{epoch}/{rank}".encode())


def stream_steps(n_train: int, batch_size: int, world_size: int) -> int:
    """Steps of an epoch, the same on every rank: each rank gets ``n_train // W`` rows (equal
    shares) and the largest slice of a global batch is ``ceil(b / W)`` rows.

    >>> stream_steps(100, 25, 1), stream_steps(100, 25, 2), stream_steps(4000, 100, 3)
    (4, 3, 39)
    """
    return (n_train // world_size) // -(-batch_size // world_size)


class StreamEpoch:
    """One epoch of a rank's stream: ``len`` = its steps; iterating yields ``(x (b_r, dim)
    standardised, y (b_r, c), the global batch's labelled count)`` per step."""

    def __init__(self, trainer: StreamRankTrainer, steps: int):
        self.trainer, self.steps = trainer, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        t = self.trainer
        seed = shuffle_seed(t.seed, t.epoch, t.rank)
        stream = t.ctx.train_batches(TRAIN, t.hi - t.lo, shuffle_buffer=t.plan.shuffle_rows,
                                     shuffle_seed=seed)
        for step, batch in enumerate(stream):
            if step >= self.steps:
                continue  # past the last whole global batch: read to the end, then dropped
            y = batch["y"]  # (b_r, c)
            yield t.model.normalize(batch["x"]), y, t.global_labeled(y)


class StreamRankTrainer(RankTrainer):
    """A data-parallel rank that streams its rows (module docstring)."""

    reads_splits = False

    def __init__(self, job: ModalitySpec, ctx: StreamContext, plan: StreamPlan):
        self.plan, self.seed = plan, modality_seed(job.config, job.modality)
        self.source = open_dataset(job.dataset_uri, validate=False)  # val and test: read batch by batch
        super().__init__(job, ctx)

    def input_dim(self) -> int:
        return self.plan.input_dim

    def n_train(self) -> int:
        return self.plan.n_train

    def standardise(self) -> dict[str, torch.Tensor]:
        """The driver's statistics of the whole train split (nothing is held: the rows stream)."""
        if self.cfg.normalize:
            self.model.set_normalizer(torch.tensor(self.plan.mean), torch.tensor(self.plan.var))  # copies
        return {}

    def batches(self) -> StreamEpoch:
        retain_freed_memory()
        steps = stream_steps(self.plan.n_train, self.cfg.batch_size, self.world)
        if steps < 1:
            raise InputError(f"modality {self.job.modality!r}: {self.plan.n_train} train rows over "
                             f"{self.world} workers leave no whole batch of {self.cfg.batch_size} an epoch; "
                             "use fewer workers or a smaller --batch-size")
        return StreamEpoch(self, steps)

    def global_labeled(self, y: torch.Tensor) -> torch.Tensor:
        """Labelled rows of the global batch (every rank's slice): SDML Eq. (1)'s |L_B|."""
        count = (y.sum(1) > 0).sum()
        if self.world > 1:
            dist.all_reduce(count)
        return count

    def eval_batches(self, split: str) -> Iterator[tuple[SplitData, torch.Tensor, torch.Tensor]]:
        """The rows of ``split`` in table order, a batch at a time: ``(rows, x (n, dim) raw, y (n, c))``
        read by this process from the table (pyarrow's scanner, no Ray Data execution: val is read
        every epoch on every rank, and is small beside train)."""
        for rows in self.source.iter_split(self.job.modality, split, self.plan.eval_batch):
            x, y = torch.tensor(rows.features), torch.tensor(rows.labels)  # (n, dim), (n, c): copies of
            # Arrow's read-only buffers (torch warns on those; a batch of EVAL_BATCH rows is small)
            yield rows, x.to(self.device), y.to(self.device)

    @torch.no_grad()
    def val_label_loss(self) -> float:
        """Every rank reads the val split and takes every W-th batch; sums all-reduced."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        count = torch.zeros((), dtype=torch.int64, device=self.device)
        for i, (_, x, y) in enumerate(self.eval_batches("val")):
            if i % self.world == self.rank:
                part, labeled = label_loss_sum(self.model.encode_normalized, self.model.normalize(x), y,
                                               self.P)
                total, count = total + part, count + labeled
        self.model.train()
        return self.reduced_mean(total, count)

    def write_outputs(self) -> None:
        """Rank 0: model.pt of the selected epoch, the embeddings of ``eval_splits`` (streamed:
        each batch encoded and written, never a whole split in memory) and the training log."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.outputs_written = True
        self.model.eval()
        m = self.job.modality
        self.store.save_model(m, model_payload(self.model, self.cfg, m, self.best_epoch,
                                               self.job.projection_sha256))
        with torch.no_grad():
            for split in self.job.eval_splits:
                parts = ((rows.ids, y.cpu().numpy(), self.model.encode(x).cpu().numpy())  # (n, d)
                         for rows, x, y in self.eval_batches(split))
                self.store.write_embeddings_parts(m, split, self.cfg.dim, parts)
        atomic_write_json(self.store.train_log_path(m), self.train_log())


def train_stream_rank(payload: tuple[ModalitySpec, StreamPlan], ctx: StreamContext) -> None:
    """What each of the W workers runs (on its own device)."""
    job, plan = payload
    StreamRankTrainer(dataclasses.replace(job, device=ctx.device), ctx, plan).run()


def stream_inputs(job: ModalitySpec, limits: IngestLimits) -> Ingest:
    """The driver's side: the moments pass over the train split, then the lazy train dataset
    (its file order shuffled each epoch, split over the workers)."""
    if job.dataset_uri is None:
        raise InputError(f"modality {job.modality!r}: streaming reads a dataset's table, not a loose table")
    quiet_ray_data()  # the moments pass runs here, in the driver: Ray Data's INFO only when --verbose
    ds = open_dataset(job.dataset_uri, validate=False)  # the job's door validated it
    filesystem, _ = resolve_uri(job.dataset_uri)
    path, dim = ds.table_path(job.modality), ds.info.modalities[job.modality].dim

    def split(name: str, **kwargs: Any):
        return split_dataset(path, filesystem, name, dim, job.n_classes, limits, **kwargs)

    n_train, mean, var = feature_moments(split(TRAIN))
    plan = StreamPlan(n_train, dim, mean, var, limits.shuffle_rows(dim, job.config.batch_size))
    seed = modality_seed(job.config, job.modality)
    return Ingest(train_stream_rank, plan, {TRAIN: split(TRAIN, seed=seed)}, data_config(limits))


def train_modality_streaming(job: ModalitySpec, workers: int, limits: IngestLimits | None = None,
                             **kwargs: Any) -> TrainResult:
    """``job``'s modality on ``workers`` ranks that stream its table within ``limits``; the other
    arguments as :func:`~scalable_xmr.sdml.data_parallel.train_modality_parallel`'s."""
    ingest = stream_inputs(job, limits or IngestLimits())
    return train_modality_parallel(job, workers, ingest=ingest, **kwargs)


class ActorStream:
    """The :class:`StreamContext` of a W = 1 stream in the modality's actor (no Ray Train): the train
    split iterated here by Ray Data within the job's ingest limits; checkpoints in the run store,
    ``last.pt`` and the one before it (the in-memory actor's files, so a restarted actor or a
    ``--resume`` continues from them); the last report's metrics kept for the actor's result."""

    rank, world_size = 0, 1

    def __init__(self, job: ModalitySpec, train: Any, limits: IngestLimits):
        self.device = str(resolve_device(job.device))  # as the in-memory actor picks it
        self.train, self.limits = train, limits
        self.path = RunStore(job.run_dir, modality=job.modality).checkpoint_path(job.modality)
        self.metrics: dict[str, Any] = {}

    def load_checkpoint(self, loader: Callable[[Path], T]) -> T | None:
        if not self.path.is_file():
            return None
        return loader(self.path.parent)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        if checkpoint_dir is not None:  # the rank's checksummed file, kept as the in-memory actor keeps it
            torchfile.save_rotating(torchfile.load(checkpoint_dir / LAST), self.path)
        self.metrics = metrics

    def train_batches(self, name: str, batch_size: int, *, shuffle_buffer: int | None = None,
                      shuffle_seed: int | None = None) -> Iterable[dict[str, torch.Tensor]]:
        """The whole train split, one epoch, as torch tensors (a fresh execution each call)."""
        self.train.context.execution_options = execution_options(self.limits)
        self.train.context.enable_progress_bars = False
        return self.train.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=shuffle_buffer
                                             or None, local_shuffle_seed=shuffle_seed, device=self.device)


def train_stream_in_actor(payload: tuple[ModalitySpec, Ingest, IngestLimits],
                          reporter: Reporter) -> TrainResult:
    """What the modality's actor runs for a W = 1 stream (``distributed.actors.run_tasks``): the
    rank of :func:`train_stream_rank` on an :class:`ActorStream`; a restarted actor resumes from
    the run store's checkpoint, and the driver is told."""
    job, ingest, limits = payload
    ctx = ActorStream(job, ingest.datasets[TRAIN], limits)
    quiet_ray_data()
    trainer = StreamRankTrainer(dataclasses.replace(job, device=ctx.device), ctx, ingest.plan)
    trainer.progress = reporter.progress
    if trainer.resumed_at:
        reporter.event(f"{job.modality}: actor (pid {os.getpid()}) resumed from its checkpoint at epoch "
                       f"{trainer.epoch}")
    trainer.run()
    return TrainResult(**ctx.metrics["result"])
