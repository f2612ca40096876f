"""The paired-dataset layout (file names, splits, special tokens; see ``data/paired.py``) and the
conversions and checks of its Arrow columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalable_xmr.errors import InputError

IMAGES_FILE = "images.parquet"
CAPTIONS_FILE = "captions.parquet"
VOCAB_FILE = "vocab.json"
SPLITS = ("train", "val", "test")
PAD, UNK = "<pad>", "<unk>"


def to_numpy_list(col: pa.ChunkedArray, width: tuple[int, ...], where: str) -> np.ndarray:
    """A (nested) fixed_size_list column as a float32 array ``(rows, *width)``."""
    if col.null_count:
        raise InputError(f"{where}: {col.null_count} null values")
    parts = []
    for chunk in col.chunks:
        for _ in width:
            chunk = chunk.flatten()
        parts.append(chunk.to_numpy(zero_copy_only=False))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    arr = np.asarray(flat, dtype=np.float32).reshape((len(col), *width))
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: contains NaN or infinite values")
    return arr


def fixed_list_array(arr: np.ndarray) -> pa.Array:
    """float32 ``(rows, *width)`` -> (nested) fixed_size_list array."""
    out: pa.Array = pa.array(np.ascontiguousarray(arr, dtype=np.float32).reshape(-1))
    for size in reversed(arr.shape[1:]):
        out = pa.FixedSizeListArray.from_arrays(out, size)
    return out


def list_shape(t: pa.DataType, where: str) -> tuple[int, ...]:
    """The widths of a float32 fixed_size_list (of fixed_size_list) type."""
    widths = []
    while pa.types.is_fixed_size_list(t):
        widths.append(t.list_size)
        t = t.value_type
    if not widths or not pa.types.is_floating(t):
        raise InputError(f"{where}: expected fixed_size_list<float32>, got {t}")
    return tuple(widths)


def pad_tokens(col: pa.ChunkedArray, vocab_size: int, ids: np.ndarray, where: str):
    """list<int32> column -> ((M, T) int64 0-padded, (M,) lengths), checked against the vocab."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        raise InputError(f"{where}: {arr.null_count} null token lists")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    _check_tokens(values, lengths, vocab_size, ids, where)
    m, t = len(lengths), int(lengths.max()) if len(lengths) else 0
    padded = np.zeros((m, t), np.int64)
    rows = np.repeat(np.arange(m), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded[rows, np.arange(len(values)) - starts] = values
    return padded, lengths


def _check_tokens(values, lengths, vocab_size: int, ids: np.ndarray, where: str) -> None:
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise InputError(f"{where}: caption {ids[empty[0]]!r} is empty ({len(empty)} empty)")
    bad = np.flatnonzero((values < 1) | (values >= vocab_size))
    if len(bad):
        row = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        raise InputError(
            f"{where}: caption {ids[row]!r} has token {int(values[bad[0]])} outside the "
            f"vocabulary 1..{vocab_size - 1} (0 is padding; {len(bad)} bad tokens in all)"
        )


def group_captions(
    cap_image_ids: np.ndarray,
    cap_ids: np.ndarray,
    image_ids: np.ndarray,
    split: str,
    all_images: Mapping[str, str],
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Image index of every caption and the stable order grouping captions by image."""
    index = {str(x): i for i, x in enumerate(image_ids)}
    img_idx = np.fromiter((index.get(str(x), -1) for x in cap_image_ids), np.int64, len(cap_image_ids))
    missing = np.flatnonzero(img_idx < 0)
    if len(missing):
        cap, img = cap_ids[missing[0]], str(cap_image_ids[missing[0]])
        if img in all_images:
            raise InputError(
                f"{where}: caption {cap!r} (split {split!r}) refers to image "
                f"{img!r} of split {all_images[img]!r}"
            )
        raise InputError(
            f"{where}: column image_id: caption {cap!r} refers to unknown image "
            f"{img!r} ({len(missing)} captions with unknown images)"
        )
    order = np.argsort(img_idx, kind="stable")
    return img_idx, order


def check_unique_ids(ids: np.ndarray, where: str) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if len(uniq) != len(ids):
        raise InputError(f"{where}: duplicate id {str(uniq[counts > 1][0])!r}")


def check_vocab(vocab: Any, where: str) -> None:
    if not isinstance(vocab, list) or len(vocab) < 2 or not all(isinstance(w, str) for w in vocab):
        raise InputError(f"{where}: expected a JSON list of >= 2 strings ('<pad>', '<unk>', ...)")
    if len(set(vocab)) != len(vocab):
        raise InputError(f"{where}: duplicate token in the vocabulary")
