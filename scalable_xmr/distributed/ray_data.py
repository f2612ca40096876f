"""One modality's table streamed by Ray Data to Ray Train workers (issue #26, streaming ingestion).

``split_dataset`` reads one split of a modality table (``<m>.parquet``: a file or a directory of
shards, local or any ``pyarrow.fs`` file system such as S3) as a Ray Data dataset of ``x`` (rows,
dim) float32 features and ``y`` (rows, c) float32 multi-hot labels (and ``id`` for the splits whose
embeddings are written). Nothing is read until a consumer iterates it; the train split goes to the
workers through Ray Train's ``datasets=`` and :func:`data_config` (``streaming_split`` over the
workers, the val and test splits whole to each), ``feature_moments`` makes one streamed pass for
the input standardisation.

Seeds and order (RAY_NOTES.md, "Ray Train V2"): the train split's file order is shuffled with
``FileShuffleConfig(seed)``, reseeded on every execution (an epoch), and each worker mixes its rows
in a local buffer seeded by its caller per (seed, epoch, rank). ``preserve_order`` keeps the
blocks in that order through the split (greedy, in arrival order), so a fixed W gives the same
batches on every run; it also turns off the split's locality hints (each block may cross nodes).

Memory (``config.IngestLimits``): Ray Data's tasks get their own CPU budget beside the workers' and an
object-store budget (blocks in flight), so on a small node ingest cannot take the workers' CPUs nor
the workers starve ingest (RAY_NOTES.md: Train workers on every CPU leave Ray Data backpressured).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray.data
from ray.data import DataContext, ExecutionOptions, ExecutionResources, FileShuffleConfig
from ray.train import DataConfig

from scalable_xmr.config import IngestLimits
from scalable_xmr.errors import InputError

TRAIN = "train"  # the dataset split over the workers
MOMENT_ROWS = 4096  # rows a moments batch: its float64 temporaries stay ~ 3 x rows x dim x 8 B


def execution_options(limits: IngestLimits) -> ExecutionOptions:
    """Ray Data's execution options for every streamed split (blocks kept in order)."""
    return ExecutionOptions(
        resource_limits=ExecutionResources(cpu=limits.cpus, object_store_memory=limits.object_store_bytes),
        preserve_order=True)


def to_arrays(batch: pa.Table, dim: int, n_classes: int, with_ids: bool) -> dict[str, np.ndarray]:
    """A block of the table as ``x`` (n, dim) float32, ``y`` (n, c) float32 multi-hot (and ``id``)."""
    n = batch.num_rows
    x = batch.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    labels = batch.column("labels").combine_chunks()
    y = np.zeros((n, n_classes), np.float32)
    rows = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
    y[rows, pc.list_flatten(labels).to_numpy(zero_copy_only=False)] = 1.0
    out = {"x": x.reshape(n, dim).astype(np.float32, copy=False), "y": y}
    if with_ids:
        out["id"] = batch.column("id").to_numpy(zero_copy_only=False).astype(str)
    return out


def split_dataset(path: str, filesystem: pafs.FileSystem, split: str, dim: int, n_classes: int,
                  limits: IngestLimits, *, seed: int | None = None,
                  with_ids: bool = False) -> ray.data.Dataset:
    """The rows of ``split`` in the table at ``path`` (lazy). ``seed``: shuffle the file order,
    reseeded on each execution (each epoch); None keeps the files' order."""
    shuffle = None if seed is None else FileShuffleConfig(seed=seed, reseed_after_execution=True)
    ds = ray.data.read_parquet(path, filesystem=filesystem, shuffle=shuffle, num_cpus=limits.task_cpus)
    ds = ds.filter(expr=f"split == '{split}'")  # pushed into the Parquet scan (row-group statistics)
    ds = ds.select_columns(["id", "labels", "features"] if with_ids else ["labels", "features"])
    ds = ds.map_batches(to_arrays, batch_format="pyarrow", zero_copy_batch=True, num_cpus=limits.task_cpus,
                        fn_kwargs={"dim": dim, "n_classes": n_classes, "with_ids": with_ids})
    ds.context.execution_options = execution_options(limits)
    ds.context.enable_progress_bars = limits.progress
    return ds


def _batch_moments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = batch["x"].astype(np.float64)  # (n, dim)
    mean = x.mean(0)
    return {"n": np.array([len(x)]), "mean": mean[None], "m2": ((x - mean) ** 2).sum(0)[None]}


def combine_moments(a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]
                    ) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) of two parts, in float64 (Chan, Golub & LeVeque's
    pairwise update: no sum-of-squares cancellation).

    >>> a, b = (2, np.array([1.0]), np.array([2.0])), (1, np.array([4.0]), np.array([0.0]))  # [0, 2], [4]
    >>> n, mean, m2 = combine_moments(a, b)
    >>> n, mean.tolist(), m2.tolist()  # [0, 2, 4]: mean 2, squared deviations 4 + 0 + 4
    (3, [2.0], [8.0])
    """
    (na, ma, qa), (nb, mb, qb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), qa + qb + delta**2 * (na * nb / n)


def feature_moments(ds: ray.data.Dataset) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, per-feature mean, per-feature population variance) of ``ds``'s ``x``: one streamed
    pass (per-block moments in Ray Data tasks, combined here), float64 throughout."""
    total: tuple[int, np.ndarray, np.ndarray] | None = None
    moments = ds.map_batches(_batch_moments, batch_format="numpy", batch_size=MOMENT_ROWS)
    for part in moments.iter_batches(batch_format="numpy"):
        for n, mean, m2 in zip(part["n"], part["mean"], part["m2"], strict=True):
            total = (int(n), mean, m2) if total is None else combine_moments(total, (int(n), mean, m2))
    if total is None:
        raise InputError("no rows to standardise: the train split is empty")
    n, mean, m2 = total
    return n, mean, m2 / n


def data_config(limits: IngestLimits) -> DataConfig:
    """Ray Train's ingest: the train split over the workers (``streaming_split``, equal shares:
    up to W-1 rows an epoch are dropped), val and test whole to each; ``limits`` for all three."""
    return DataConfig(datasets_to_split=[TRAIN], execution_options=execution_options(limits))


def quiet_progress(show: bool) -> None:
    """Ray Data's progress bars in this process (the driver's moments pass) on or off."""
    DataContext.get_current().enable_progress_bars = show
