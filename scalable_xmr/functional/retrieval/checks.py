"""Input checks of the retrieval metrics: arrays in, finite tensors and labels out; chunking."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from scalable_xmr.errors import InputError

ArrayLike = np.ndarray | torch.Tensor

# Elements per temporary block when a function walks a given matrix (about 64 MB of float32).
BLOCK_ELEMENTS = 1 << 24


def _to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if not isinstance(x, np.ndarray | list | tuple):
        raise InputError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    with warnings.catch_warnings():  # read-only (memory-mapped) arrays: we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(np.asarray(x))


def as_float_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    """Return ``x`` as a finite 2-D float tensor (float64 kept, integers -> float64, else float32).

    Raises InputError naming ``name`` for a wrong rank, an empty matrix or any NaN / inf (checked
    in row chunks so that a big similarity matrix is never duplicated as a boolean mask).
    """
    t = _to_tensor(x, name)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    for r0, r1 in chunk_ranges(t.shape[0], max(1, BLOCK_ELEMENTS // t.shape[1])):
        # Fast path: a sum is finite when every entry is (one read, no mask); a non-finite sum
        # (NaN / inf inside, or a mere overflow) is resolved entry by entry.
        if bool(torch.isfinite(t[r0:r1].sum())):
            continue
        bad = (~torch.isfinite(t[r0:r1])).nonzero()
        if len(bad):
            row, col = (int(v) for v in bad[0])
            raise InputError(
                f"{name} contains NaN or inf (first at row {r0 + row}, column {col}: "
                f"{t[r0 + row, col].item()})"
            )
    return t


def _as_labels(labels: ArrayLike, name: str, n_rows: int) -> torch.Tensor:
    t = _to_tensor(labels, name)
    if t.ndim not in (1, 2):
        raise InputError(
            f"{name} must be class indices (n,) or multi-hot (n, c), got shape {tuple(t.shape)}"
        )
    if t.shape[0] != n_rows:
        raise InputError(f"{name} has {t.shape[0]} rows but its embeddings have {n_rows}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise InputError(f"{name} must hold integers, got non-integer values ({t.dtype})")
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise InputError(f"{name} contains negative labels (min {int(t.min())})")
    if t.ndim == 2 and t.numel() and int(t.max()) > 1:
        raise InputError(f"{name} is multi-hot (2-D) and must hold only 0/1, found {int(t.max())}")
    return t


def _one_hot(labels: torch.Tensor, n_classes: int, name: str) -> torch.Tensor:
    if labels.ndim == 2:
        return labels
    if labels.numel() and int(labels.max()) >= n_classes:
        raise InputError(
            f"{name} holds class {int(labels.max())} but the other side's multi-hot labels have "
            f"only {n_classes} classes"
        )
    return torch.nn.functional.one_hot(labels, n_classes)


def check_retrieval_inputs(query_emb, gallery_emb, query_labels, gallery_labels, chunk_size):
    q = as_float_matrix(query_emb, "query_emb")
    g = as_float_matrix(gallery_emb, "gallery_emb")
    if q.shape[1] != g.shape[1]:
        raise InputError(
            f"query_emb has dim {q.shape[1]} but gallery_emb has dim {g.shape[1]}; they must agree"
        )
    if q.dtype != g.dtype:
        q, g = q.to(torch.float64), g.to(torch.float64)
    ql = _as_labels(query_labels, "query_labels", q.shape[0])
    gl = _as_labels(gallery_labels, "gallery_labels", g.shape[0])
    if ql.ndim != gl.ndim:  # class indices on one side, multi-hot on the other: one-hot them
        n_classes = max(ql.shape[1] if ql.ndim == 2 else 0, gl.shape[1] if gl.ndim == 2 else 0)
        ql, gl = _one_hot(ql, n_classes, "query_labels"), _one_hot(gl, n_classes, "gallery_labels")
    if ql.ndim == 2 and ql.shape[1] != gl.shape[1]:
        raise InputError(
            f"query_labels {tuple(ql.shape)} and gallery_labels {tuple(gl.shape)} are multi-hot "
            "with different numbers of classes"
        )
    check_positive_int(chunk_size, "chunk_size")
    # Cosine similarity: L2-normalise both sides (a zero vector stays zero: similarity 0).
    return F.normalize(q, dim=1), F.normalize(g, dim=1), ql, gl


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def chunk_ranges(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive blocks of at most ``size`` (at least 1) covering ``range(n)``."""
    size = max(1, size)
    for start in range(0, n, size):
        yield start, min(start + size, n)
