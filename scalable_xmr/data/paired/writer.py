"""Writing a paired dataset: the ``images.parquet`` / ``captions.parquet`` tables and
:func:`write_paired_dataset`, which reads every split back before the dataset appears."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_xmr.data.paired.dataset import check_paired_dataset
from scalable_xmr.data.paired.format import (
    CAPTIONS_FILE,
    IMAGES_FILE,
    SPLITS,
    VOCAB_FILE,
    check_unique_ids,
    check_vocab,
    fixed_list_array,
)
from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_path


def images_table(
    image_ids: Sequence[str], splits: Sequence[str], arrays: Any, where: str = "images"
) -> pa.Table:
    """Build an images.parquet table; ``arrays`` is (N, dim), (N, R, dim) or a list of arrays."""
    if isinstance(arrays, np.ndarray):
        arr = arrays
    else:
        items = [np.asarray(a) for a in arrays]
        shapes = {a.shape for a in items}
        if len(shapes) > 1:
            first = items[0].shape
            bad = next(i for i, a in enumerate(items) if a.shape != first)
            raise InputError(
                f"{where}: image {image_ids[bad]!r} has array shape "
                f"{items[bad].shape}, expected {first} like the first image"
            )
        arr = np.stack(items) if items else np.zeros((0, 0), np.float32)
    if arr.ndim not in (2, 3) or arr.shape[0] != len(image_ids) or arr.shape[-1] == 0:
        raise InputError(
            f"{where}: expected arrays of shape (N={len(image_ids)}, dim) or "
            f"(N, n_regions, dim), got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: contains NaN or infinite values")
    column = "features" if arr.ndim == 2 else "regions"
    return pa.table(
        {
            "image_id": pa.array(list(map(str, image_ids)), pa.string()),
            "split": pa.array(list(map(str, splits)), pa.string()),
            column: fixed_list_array(arr),
        }
    )


def captions_table(
    caption_ids: Sequence[str],
    image_ids: Sequence[str],
    splits: Sequence[str],
    tokens: Sequence[Sequence[int]] | None = None,
    features: np.ndarray | None = None,
    text: Sequence[str] | None = None,
) -> pa.Table:
    """Build a captions.parquet table (tokens and/or dense features; optional raw text)."""
    cols: dict[str, pa.Array] = {
        "caption_id": pa.array(list(map(str, caption_ids)), pa.string()),
        "image_id": pa.array(list(map(str, image_ids)), pa.string()),
        "split": pa.array(list(map(str, splits)), pa.string()),
    }
    if tokens is not None:
        cols["tokens"] = pa.array([list(map(int, t)) for t in tokens], pa.list_(pa.int32()))
    if features is not None:
        feats = np.asarray(features, np.float32)
        if feats.ndim != 2 or feats.shape[0] != len(caption_ids):
            raise InputError(f"captions: features must be (M={len(caption_ids)}, D), got {feats.shape}")
        cols["features"] = fixed_list_array(feats)
    if text is not None:
        cols["text"] = pa.array(list(map(str, text)), pa.string())
    return pa.table(cols)


def write_paired_dataset(
    out: str | os.PathLike,
    images: Mapping[str, Any],
    captions: Mapping[str, Any],
    vocab: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Validate and write a paired dataset atomically (local directories only).

    ``images``: ``{"image_id", "split", "features" (N, dim) | "regions" (N, R, dim) or a list of
    per-image arrays}``. ``captions``: ``{"caption_id", "image_id", "split" (optional: the image's
    split), "tokens" (int sequences) and/or "features" (M, D), "text" (optional)}``. Every split is
    re-read and checked after writing, so a dataset that writes is a dataset that reads.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass overwrite=True to replace it)")
    _check_keys(images, {"image_id", "split"}, {"features", "regions"}, "images")
    _check_keys(captions, {"caption_id", "image_id"}, {"split", "tokens", "features", "text"}, "captions")
    img_kind = "features" if "features" in images else "regions"
    if ("features" in images) == ("regions" in images):
        raise InputError("images: give exactly one of 'features' or 'regions'")
    if "tokens" not in captions and "features" not in captions:
        raise InputError("captions: give 'tokens' and/or 'features'")
    if ("tokens" in captions) != (vocab is not None):
        raise InputError("vocab: required exactly when captions have 'tokens'")
    img_split = dict(zip(map(str, images["image_id"]), map(str, images["split"]), strict=True))
    bad_splits = sorted(set(img_split.values()) - set(SPLITS))
    if bad_splits:
        raise InputError(f"images: column split: unknown split {bad_splits[0]!r} (expected {SPLITS})")
    check_unique_ids(np.asarray(list(images["image_id"]), dtype=object), "images: column image_id")
    check_unique_ids(np.asarray(list(captions["caption_id"]), dtype=object), "captions: column caption_id")
    for cap, img in zip(captions["caption_id"], captions["image_id"], strict=True):
        if str(img) not in img_split:
            raise InputError(
                f"captions: column image_id: caption {str(cap)!r} refers to unknown image {str(img)!r}"
            )
    cap_splits = captions.get("split")
    if cap_splits is None:  # a caption's split is its image's split
        cap_splits = [img_split[str(i)] for i in captions["image_id"]]
    img_tab = images_table(list(images["image_id"]), list(images["split"]), images[img_kind])
    cap_tab = captions_table(
        captions["caption_id"],
        captions["image_id"],
        cap_splits,
        captions.get("tokens"),
        captions.get("features"),
        captions.get("text"),
    )
    if vocab is not None:
        check_vocab(vocab, "vocab")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        pq.write_table(img_tab, tmp / IMAGES_FILE)
        pq.write_table(cap_tab, tmp / CAPTIONS_FILE)
        if vocab is not None:
            (tmp / VOCAB_FILE).write_text(json.dumps(vocab) + "\n", encoding="utf-8")
        check_paired_dataset(tmp)
    return out


def _check_keys(d: Mapping[str, Any], required: set[str], optional: set[str], where: str):
    if not isinstance(d, Mapping):
        raise InputError(f"{where}: expected a dict of columns, got {type(d).__name__}")
    missing, unknown = required - set(d), set(d) - required - optional
    if missing:
        raise InputError(f"{where}: missing column {sorted(missing)[0]!r}")
    if unknown:
        raise InputError(
            f"{where}: unknown column {sorted(unknown)[0]!r} (allowed: {sorted(required | optional)})"
        )
