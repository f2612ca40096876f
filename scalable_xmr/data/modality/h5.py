"""Wikipedia / NUS-WIDE / MS-COCO converter: the SDML ``.h5`` layout -> a dataset (docs/data.md).

Keys: ``train_imgs_deep, train_imgs_labels, train_text, train_texts_labels, test_imgs_deep,
test_imgs_labels, test_text, test_texts_labels``. Image and text rows are paired by index, so both
modalities share ids (``wikipedia-train-000000``, ``wikipedia-test-000000``: the row in the original
array). Split as SDML Table 1: val = the first 231 / 5000 / 10000 test rows, test = the rest.

Labels: single-label arrays ((n,) or (n, 1)) are shifted by their minimum, taken over all four label
arrays together so one class keeps one index across splits and modalities (the files use 1-based
or 0-based classes depending on who exported them). Multi-hot arrays ((n, c), c > 1, entries 0/1;
MS-COCO: c = 80) become lists of class indices and make the dataset multi-label.
"""

from __future__ import annotations

import os

import numpy as np

from scalable_xmr.data.modality.dataset import Dataset, DatasetInfo, ModalityInfo, write_dataset
from scalable_xmr.data.modality.table import check_finite_matrix
from scalable_xmr.errors import InputError, MissingError

H5_VAL_ROWS = {"wikipedia": 231, "nus-wide": 5000, "coco": 10000}
# modality -> (features key, labels key) per part
H5_KEYS = {
    "train": {
        "image": ("train_imgs_deep", "train_imgs_labels"),
        "text": ("train_text", "train_texts_labels"),
    },
    "test": {
        "image": ("test_imgs_deep", "test_imgs_labels"),
        "text": ("test_text", "test_texts_labels"),
    },
}


def _read_h5(h5_path: str) -> dict[str, np.ndarray]:
    import h5py

    if not os.path.isfile(h5_path):
        raise MissingError(f"{h5_path}: file not found")
    keys = [k for part in H5_KEYS.values() for pair in part.values() for k in pair]
    try:
        f = h5py.File(h5_path, "r")
    except OSError as e:
        raise InputError(f"{h5_path}: not a readable HDF5 file ({e})") from e
    with f:
        missing = [k for k in keys if k not in f]
        if missing:
            also = f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""
            raise InputError(f"{h5_path}: missing key {missing[0]!r}{also}")
        return {k: np.asarray(f[k][()]) for k in keys}


def _label_arrays(
    raw: dict[str, np.ndarray], h5_path: str
) -> tuple[dict[str, np.ndarray], int, bool]:
    """{key: (n,) int64 labels or (n, c) 0/1 multi-hot}, n_classes, multi_label."""
    keys = [pair[1] for part in H5_KEYS.values() for pair in part.values()]
    arrays = {k: raw[k] for k in keys}
    multi_hot = {k: a.ndim == 2 and a.shape[1] > 1 for k, a in arrays.items()}
    if len(set(multi_hot.values())) != 1:
        shapes = {k: a.shape for k, a in arrays.items()}
        raise InputError(f"{h5_path}: label arrays mix single-label and multi-hot shapes {shapes}")
    out: dict[str, np.ndarray] = {}
    if all(multi_hot.values()):
        widths = {a.shape[1] for a in arrays.values()}
        if len(widths) != 1:
            raise InputError(f"{h5_path}: multi-hot label arrays differ in width {sorted(widths)}")
        for k, a in arrays.items():
            if not np.isin(a, (0, 1)).all():
                raise InputError(
                    f"{h5_path}: key {k!r} is multi-hot but holds values other than 0/1"
                )
            out[k] = a.astype(np.uint8)
        return out, widths.pop(), True
    flat = {}
    for k, a in arrays.items():
        if a.ndim > 2 or (a.ndim == 2 and a.shape[1] != 1):
            raise InputError(f"{h5_path}: key {k!r} has shape {a.shape}; expected (n,) or (n, 1)")
        a = a.reshape(-1)
        if not np.issubdtype(a.dtype, np.number) or not np.array_equal(a, np.round(a)):
            raise InputError(f"{h5_path}: key {k!r} must hold integer class indices")
        flat[k] = a.astype(np.int64)
    low = min(int(a.min()) for a in flat.values() if a.size)
    n_classes = max(int(a.max()) for a in flat.values() if a.size) - low + 1
    return {k: a - low for k, a in flat.items()}, n_classes, False


def convert_h5(h5_path: str, name: str, out: str, overwrite: bool = False) -> Dataset:
    """Convert a Wikipedia / NUS-WIDE / MS-COCO ``.h5`` file (``name``: wikipedia|nus-wide|coco)."""
    if name not in H5_VAL_ROWS:
        raise InputError(f"name must be one of {sorted(H5_VAL_ROWS)}, got {name!r}")
    h5_path = os.fspath(h5_path)
    raw = _read_h5(h5_path)
    labels, n_classes, multi_label = _label_arrays(raw, h5_path)
    n_val = H5_VAL_ROWS[name]
    tables, modalities = {}, {}
    for m in ("image", "text"):
        parts = []
        for part in ("train", "test"):
            k_x, k_y = H5_KEYS[part][m]
            x = raw[k_x]
            if x.ndim != 2 or len(x) != len(labels[k_y]):
                raise InputError(
                    f"{h5_path}: key {k_x!r} has shape {x.shape} but {k_y!r} has "
                    f"{len(labels[k_y])} rows; expected ({len(labels[k_y])}, dim)"
                )
            x = x.astype(np.float32)
            check_finite_matrix(x, h5_path, k_x)
            parts.append((part, x, labels[k_y]))
        (_, x_tr, y_tr), (_, x_te, y_te) = parts
        if x_tr.shape[1] != x_te.shape[1]:
            raise InputError(
                f"{h5_path}: {m} train dim {x_tr.shape[1]} != test dim {x_te.shape[1]}"
            )
        if len(x_te) <= n_val:
            raise InputError(
                f"{h5_path}: key {H5_KEYS['test'][m][0]!r} has {len(x_te)} rows; {name} needs "
                f"more than {n_val} (first {n_val} = val, the rest = test)"
            )
        ids = [f"{name}-train-{i:06d}" for i in range(len(x_tr))]
        ids += [f"{name}-test-{i:06d}" for i in range(len(x_te))]
        splits = ["train"] * len(x_tr) + ["val"] * n_val + ["test"] * (len(x_te) - n_val)
        tables[m] = (ids, splits, np.concatenate([y_tr, y_te]), np.concatenate([x_tr, x_te]))
        modalities[m] = ModalityInfo(m, int(x_tr.shape[1]))
    class_names = tuple(f"class_{i:02d}" for i in range(n_classes))
    info = DatasetInfo(name, n_classes, multi_label, class_names, modalities)
    return write_dataset(out, info, tables, overwrite=overwrite)
