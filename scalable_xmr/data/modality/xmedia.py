"""PKU XMedia converter: ``XMediaFeatures.mat`` -> a scalable_xmr dataset (docs/data.md).

The file (from the SDML authors' release) holds features ``I_tr_CNN/I_te_CNN`` (image, 4096),
``T_tr_BOW/T_te_BOW`` (text, 3000), ``A_tr/A_te`` (audio, 29), ``d3_tr/d3_te`` (3d, 4700),
``V_tr_CNN/V_te_CNN`` (video, 4096) and labels ``trImgCat, teImgCat, ...`` (n x 1, classes 1..20).
Split as the SDML reference code does: train = ``*_tr``; test = the first 500/500/100/50/87 rows of
each ``*_te``; val = the rest of ``*_te``. XMedia's modalities are not paired instance by instance,
so ids are per modality (``image-tr-00000``, ``image-te-00000``: the row in the original array).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from scalable_xmr.data.modality.dataset import Dataset, DatasetInfo, ModalityInfo, write_dataset
from scalable_xmr.data.modality.table import check_finite_matrix
from scalable_xmr.errors import InputError, MissingError

N_CLASSES = 20
CLASS_NAMES = tuple(f"class_{i:02d}" for i in range(N_CLASSES))  # XMedia ships no class names

# modality -> (train features, test features, train labels, test labels, test rows)
XMEDIA_KEYS: dict[str, tuple[str, str, str, str, int]] = {
    "image": ("I_tr_CNN", "I_te_CNN", "trImgCat", "teImgCat", 500),
    "text": ("T_tr_BOW", "T_te_BOW", "trTxtCat", "teTxtCat", 500),
    "audio": ("A_tr", "A_te", "trAudCat", "teAudCat", 100),
    "3d": ("d3_tr", "d3_te", "tr3dCat", "te3dCat", 50),
    "video": ("V_tr_CNN", "V_te_CNN", "trVidCat", "teVidCat", 87),
}


def _load_mat(mat_path: str) -> dict[str, Any]:
    """All variables of a .mat file (v4-v7 via scipy; v7.3 / HDF5 via h5py)."""
    import scipy.io  # lazy: keeps `import scalable_xmr.data` cheap
    from scipy.io.matlab import MatReadError

    if not os.path.isfile(mat_path):
        raise MissingError(f"{mat_path}: file not found")
    try:
        return scipy.io.loadmat(mat_path)
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        return _load_mat73(mat_path)
    except (ValueError, OSError, TypeError, MatReadError) as e:  # empty, truncated, not a .mat
        raise InputError(f"{mat_path}: not a readable MATLAB .mat file "
                         f"({os.path.getsize(mat_path)} bytes; {e})") from None


def _load_mat73(mat_path: str) -> dict[str, Any]:
    """MATLAB v7.3 files are HDF5 with arrays stored transposed (column-major)."""
    import h5py
    import scipy.sparse

    out: dict[str, Any] = {}
    with h5py.File(mat_path, "r") as f:
        for key, node in f.items():
            if isinstance(node, h5py.Dataset):
                out[key] = node[()].T
            elif "MATLAB_sparse" in node.attrs:  # CSC parts of a MATLAB sparse matrix
                n_rows = int(node.attrs["MATLAB_sparse"])
                jc = node["jc"][()]
                data = node["data"][()] if "data" in node else np.ones(len(node["ir"]))
                out[key] = scipy.sparse.csc_matrix(
                    (data, node["ir"][()], jc), shape=(n_rows, len(jc) - 1)
                )
    return out


def _features(mat: dict[str, Any], key: str, mat_path: str) -> np.ndarray:
    if key not in mat:
        raise InputError(f"{mat_path}: missing key {key!r}")
    x = mat[key]
    if hasattr(x, "toarray"):  # scipy.sparse: BoW text may be stored sparse
        x = x.toarray()
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{mat_path}: key {key!r} must be a numeric matrix, got shape {x.shape}")
    x = x.astype(np.float32)  # (n, dim)
    check_finite_matrix(x, mat_path, key)
    return x


def _labels(mat: dict[str, Any], key: str, n: int, mat_path: str) -> np.ndarray:
    """n x 1 class indices 1..20 -> (n,) int64 0..19."""
    if key not in mat:
        raise InputError(f"{mat_path}: missing key {key!r}")
    y = np.asarray(mat[key])
    if y.size != n or (y.ndim == 2 and min(y.shape) != 1):
        raise InputError(f"{mat_path}: key {key!r} has shape {y.shape}, expected ({n}, 1)")
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.number) or not np.array_equal(y, np.round(y)):
        raise InputError(f"{mat_path}: key {key!r} must hold integer class indices")
    bad = (y < 1) | (y > N_CLASSES)
    if bad.any():
        raise InputError(
            f"{mat_path}: key {key!r} has label {y[bad][0]:g}; XMedia labels are 1..{N_CLASSES}"
        )
    return y.astype(np.int64) - 1  # MATLAB 1-based -> 0-based


def convert_xmedia(mat_path: str, out: str, overwrite: bool = False) -> Dataset:
    """Convert ``XMediaFeatures.mat`` into a dataset at ``out`` (written atomically)."""
    mat = _load_mat(os.fspath(mat_path))
    tables, modalities = {}, {}
    for m, (k_tr, k_te, k_ytr, k_yte, n_test) in XMEDIA_KEYS.items():
        x_tr, x_te = _features(mat, k_tr, mat_path), _features(mat, k_te, mat_path)
        if x_tr.shape[1] != x_te.shape[1]:
            raise InputError(
                f"{mat_path}: {k_tr} has {x_tr.shape[1]} columns but {k_te} has {x_te.shape[1]}"
            )
        if len(x_te) <= n_test:
            raise InputError(
                f"{mat_path}: key {k_te!r} has {len(x_te)} rows; the XMedia split needs more "
                f"than {n_test} (first {n_test} = test, the rest = val)"
            )
        y_tr = _labels(mat, k_ytr, len(x_tr), mat_path)
        y_te = _labels(mat, k_yte, len(x_te), mat_path)
        ids = [f"{m}-tr-{i:05d}" for i in range(len(x_tr))]
        ids += [f"{m}-te-{i:05d}" for i in range(len(x_te))]
        splits = ["train"] * len(x_tr) + ["test"] * n_test + ["val"] * (len(x_te) - n_test)
        tables[m] = (ids, splits, np.concatenate([y_tr, y_te]), np.concatenate([x_tr, x_te]))
        modalities[m] = ModalityInfo(m, int(x_tr.shape[1]))
    info = DatasetInfo("xmedia", N_CLASSES, False, CLASS_NAMES, modalities)
    return write_dataset(out, info, tables, overwrite=overwrite)
