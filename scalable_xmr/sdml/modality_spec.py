"""What one modality's training starts from: its spec (by reference: paths, not arrays), its
device, its splits as tensors and the run's P, checked. Shared by :class:`~scalable_xmr.sdml.
trainer.ModalityTrainer` (one network) and :class:`~scalable_xmr.sdml.population.PopulationTrainer`
(N configurations at once); a sweep's trials read their splits through the worker's cache
(``reuse_data``, data/modality/cache.py)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.filesystem import resolve_uri, source_identity
from scalable_xmr.data.modality.cache import cached_splits
from scalable_xmr.data.modality.dataset import SplitData, open_dataset, read_modality_table
from scalable_xmr.errors import InputError
from scalable_xmr.models.runtime import resolve_device
from scalable_xmr.store.projection import load_projection
from scalable_xmr.store.run_store import RunStore


@dataclass(frozen=True)
class ModalitySpec:
    """Everything one modality's training needs, by reference (paths, not arrays)."""

    run_dir: str
    modality: str
    config: SDMLConfig
    dataset_uri: str | None = None  # a dataset directory/URI holding <modality>.parquet ...
    table_path: str | None = None  # ... or a loose modality table (add-modality job)
    n_classes: int = 0
    projection_sha256: str | None = None
    device: str = "auto"
    num_threads: int | None = None
    # Splits read besides train: val selects the epoch, test gets embeddings for evaluation. A
    # sweep trial reads ("val",) alone: its sweep scores the chosen trial on test once, at the end.
    eval_splits: tuple[str, ...] = ("val", "test")
    # Keep the splits read in this process for the next job of the same modality (a sweep's
    # reused trial actors: data/modality/cache.py); a training job reads its data once anyway.
    reuse_data: bool = False

    def __post_init__(self) -> None:
        if (self.dataset_uri is None) == (self.table_path is None):
            raise InputError("give exactly one of dataset_uri and table_path")
        if self.eval_splits not in (("val", "test"), ("val",)):
            raise InputError(f"eval_splits must be ('val', 'test') or ('val',), got {self.eval_splits!r}")


def check_split_sizes(modality: str, sizes: dict[str, int], batch_size: int, where: str) -> None:
    """One line unless ``modality`` can train: a full batch of train rows, val and test rows.

    Called by the jobs before any actor starts (a modality that cannot train must not cost the
    others a minute of training first). ``sizes`` maps split -> rows; ``where`` names the table.
    """
    n_train = int(sizes.get("train", 0))
    if n_train < batch_size:
        raise InputError(f"modality {modality!r} ({where}): train split has {n_train} rows, fewer than "
                         f"one batch of {batch_size}; lower --batch-size to at most {n_train} or add rows")
    for split in ("val", "test"):  # model selection reads val, evaluation reads test
        if int(sizes.get(split, 0)) < 1:
            raise InputError(f"modality {modality!r} ({where}): {split} split has no rows")


class ModalityData:
    """One modality's splits as tensors on the device (features raw, labels multi-hot)."""

    def __init__(self, job: ModalitySpec, device: torch.device):
        splits = _load_splits(job)
        self.ids = {s: d.ids for s, d in splits.items()}
        with warnings.catch_warnings():
            # Arrow's zero-copy buffers are read-only; these tensors are never written to.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.features = {s: torch.from_numpy(d.features).to(device) for s, d in splits.items()}
        self.labels = {s: torch.from_numpy(d.labels).to(device) for s, d in splits.items()}
        self.input_dim = int(self.features["train"].shape[1])
        if self.labels["train"].shape[1] != job.n_classes:
            raise InputError(
                f"modality {job.modality!r}: labels have {self.labels['train'].shape[1]} classes, "
                f"the run has {job.n_classes}"
            )


def load_spec_projection(job: ModalitySpec, store: RunStore, device: torch.device) -> torch.Tensor:
    """P (d, c) of ``job``'s run, checked against its sha256 and the config's dim."""
    P = load_projection(store.projection_path, expected_sha256=job.projection_sha256)
    if P.shape != (job.config.dim, job.n_classes):
        raise InputError(
            f"{store.projection_path}: P is {P.shape}, expected (dim {job.config.dim}, "
            f"n_classes {job.n_classes})"
        )
    return torch.from_numpy(np.array(P)).to(device)  # (d, c)


def _load_splits(job: ModalitySpec) -> dict[str, SplitData]:
    """The train split and ``job.eval_splits``, from memory when ``job.reuse_data`` and this
    process read the same unchanged files before (data/modality/cache.py)."""
    splits = ("train", *job.eval_splits)
    if job.table_path is not None:
        def load() -> dict[str, SplitData]:
            tables = read_modality_table(job.table_path, n_classes=job.n_classes)
            return {s: tables[s] for s in splits}

        def identity() -> tuple | None:
            return source_identity(*resolve_uri(job.table_path))
    else:
        ds = open_dataset(job.dataset_uri, validate=False)

        def load() -> dict[str, SplitData]:
            return {s: ds.read_split(job.modality, s) for s in splits}

        def identity() -> tuple | None:
            return ds.source_identity(job.modality)
    if not job.reuse_data:
        return load()
    key = (job.dataset_uri, job.table_path, job.modality, splits, job.n_classes)
    return cached_splits(key, identity(), load)


def spec_context(job: ModalitySpec, load_data: bool = True
                ) -> tuple[torch.device, RunStore, torch.Tensor, ModalityData | None]:
    """What a trainer of ``job`` starts from (one network or a population): torch threads set,
    the device, the run store, P (d, c) checked against its sha256, and the modality's data (None
    without ``load_data``: a streaming rank reads its rows batch by batch, sdml/streaming.py)."""
    if job.num_threads:
        torch.set_num_threads(job.num_threads)
    device = resolve_device(job.device)
    store = RunStore(job.run_dir, modality=job.modality)  # on S3: P and this modality's files
    data = ModalityData(job, device) if load_data else None
    return device, store, load_spec_projection(job, store, device), data
