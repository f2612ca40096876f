"""Paired image-text datasets for the branch models (DESIGN.md §2).

A paired dataset is a directory (or pyarrow.fs URI, read-only) holding

- ``images.parquet``: ``image_id: string, split: string`` and either
  ``features: fixed_size_list<float32>[dim]`` (one vector per image) or
  ``regions: fixed_size_list<fixed_size_list<float32>[dim]>[n_regions]`` (region features);
- ``captions.parquet``: ``caption_id: string, image_id: string, split: string`` and
  ``tokens: list<int32>`` (indices into ``vocab.json``; 0 is padding and never inside a caption)
  and/or ``features: fixed_size_list<float32>[dim]`` (a dense "text" vector, e.g. a second view
  of UCI mfeat); optionally ``text: string`` (the raw caption, for display only);
- ``vocab.json``: the token list (index 0 = "<pad>", 1 = "<unk>"), present when there are tokens.

:meth:`PairedDataset.read_split` returns the captions grouped by image (image i's captions are
consecutive), which is what the VSE++ R@K protocol (caption j -> image j // n) needs.

Sources live in ``data/paired_sources.py`` and are re-exported here: :func:`convert_precomp`
(SCAN/VSE++ "precomp" files), :func:`make_synthetic_pairs` (regions and captions from shared
latent concepts) and :func:`mfeat_pairs` (two views of UCI mfeat digits as image/"text" pairs, the
text side a dense vector), with :func:`tokenize` and :func:`build_vocab`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import atomic_path

IMAGES_FILE = "images.parquet"
CAPTIONS_FILE = "captions.parquet"
VOCAB_FILE = "vocab.json"
SPLITS = ("train", "val", "test")
PAD, UNK = "<pad>", "<unk>"

# Defined in paired_sources.py (which imports this module) and re-exported by __getattr__ below.
_SOURCES = ("convert_precomp", "make_synthetic_pairs", "mfeat_pairs", "tokenize", "build_vocab")

__all__ = [
    *_SOURCES,
    "PairedDataset",
    "PairedSplit",
    "open_paired_dataset",
    "write_paired_dataset",
    "images_table",
    "captions_table",
    "check_paired_dataset",
    "IMAGES_FILE",
    "CAPTIONS_FILE",
    "VOCAB_FILE",
    "PAD",
    "UNK",
]


@dataclass(frozen=True, eq=False)
class PairedSplit:
    """One split of a paired dataset, captions grouped by image (caption j -> image index[j])."""

    split: str
    image_ids: np.ndarray  # (N,) str
    images: np.ndarray  # (N, dim) or (N, n_regions, dim) float32
    caption_ids: np.ndarray  # (M,) str
    caption_image_index: np.ndarray  # (M,) int64, non-decreasing
    tokens: np.ndarray | None  # (M, T) int64, 0-padded on the right
    lengths: np.ndarray | None  # (M,) int64, >= 1
    text_features: np.ndarray | None  # (M, D) float32
    captions_per_image: int | None  # the constant count, None when counts differ
    vocab_size: int  # len(vocab.json); 0 without tokens

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_captions(self) -> int:
        return int(self.caption_image_index.shape[0])

    @property
    def image_dim(self) -> int:
        return int(self.images.shape[-1])

    @property
    def text_dim(self) -> int | None:
        """Width of the dense text features, None when the split has none."""
        return None if self.text_features is None else int(self.text_features.shape[1])

    def require_captions_per_image(self) -> int:
        """The constant caption count per image that R@K needs, or InputError."""
        if self.captions_per_image is None:
            counts = np.bincount(self.caption_image_index, minlength=self.n_images)
            raise InputError(
                f"split {self.split!r}: R@K needs the same number of captions for every image, "
                f"found counts from {counts.min()} to {counts.max()} "
                f"(image {self.image_ids[int(np.argmin(counts))]!r} has {counts.min()})"
            )
        return self.captions_per_image


def _to_numpy_list(col: pa.ChunkedArray, width: tuple[int, ...], where: str) -> np.ndarray:
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


def _fixed_list_array(arr: np.ndarray) -> pa.Array:
    """float32 ``(rows, *width)`` -> (nested) fixed_size_list array."""
    out: pa.Array = pa.array(np.ascontiguousarray(arr, dtype=np.float32).reshape(-1))
    for size in reversed(arr.shape[1:]):
        out = pa.FixedSizeListArray.from_arrays(out, size)
    return out


def _list_shape(t: pa.DataType, where: str) -> tuple[int, ...]:
    """The widths of a float32 fixed_size_list (of fixed_size_list) type."""
    widths = []
    while pa.types.is_fixed_size_list(t):
        widths.append(t.list_size)
        t = t.value_type
    if not widths or not pa.types.is_floating(t):
        raise InputError(f"{where}: expected fixed_size_list<float32>, got {t}")
    return tuple(widths)


def _pad_tokens(col: pa.ChunkedArray, vocab_size: int, ids: np.ndarray, where: str):
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


def _group_captions(
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


def _check_unique(ids: np.ndarray, where: str) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if len(uniq) != len(ids):
        raise InputError(f"{where}: duplicate id {str(uniq[counts > 1][0])!r}")


class PairedDataset:
    """A paired image-text dataset opened for reading (see the module docstring)."""

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str) -> None:
        self.uri, self._fs, self._root = uri, fs, root
        for name in (IMAGES_FILE, CAPTIONS_FILE):
            if fs.get_file_info(self._path(name)).type == pafs.FileType.NotFound:
                raise MissingError(f"{uri}: {name} not found (not a paired dataset?)")
        self.image_schema = pq.read_schema(self._path(IMAGES_FILE), filesystem=fs)
        self.caption_schema = pq.read_schema(self._path(CAPTIONS_FILE), filesystem=fs)
        self._check_schemas()
        self.vocab: list[str] | None = None
        if "tokens" in self.caption_schema.names:
            self.vocab = self._read_vocab()

    def _path(self, name: str) -> str:
        return f"{self._root.rstrip('/')}/{name}"

    def _check_schemas(self) -> None:
        img, cap = self.image_schema, self.caption_schema
        for schema, file, cols in (
            (img, IMAGES_FILE, ("image_id", "split")),
            (cap, CAPTIONS_FILE, ("caption_id", "image_id", "split")),
        ):
            for c in cols:
                if c not in schema.names:
                    raise InputError(f"{self.uri}/{file}: missing column {c!r}")
        kinds = [c for c in ("features", "regions") if c in img.names]
        if len(kinds) != 1:
            raise InputError(
                f"{self.uri}/{IMAGES_FILE}: needs exactly one of the columns "
                f"'features' or 'regions', found {kinds}"
            )
        self.image_column = kinds[0]
        where = f"{self.uri}/{IMAGES_FILE}: column {self.image_column}"
        self.image_shape = _list_shape(img.field(self.image_column).type, where)
        if len(self.image_shape) != (1 if kinds[0] == "features" else 2):
            raise InputError(f"{where}: inconsistent region array type {img.field(self.image_column).type}")
        self.text_dim: int | None = None
        if "features" in cap.names:
            shape = _list_shape(cap.field("features").type, f"{self.uri}/{CAPTIONS_FILE}")
            if len(shape) != 1:
                raise InputError(f"{self.uri}/{CAPTIONS_FILE}: column features must be flat")
            self.text_dim = shape[0]
        if "tokens" not in cap.names and self.text_dim is None:
            raise InputError(f"{self.uri}/{CAPTIONS_FILE}: needs a 'tokens' or 'features' column")

    def _read_vocab(self) -> list[str]:
        path = self._path(VOCAB_FILE)
        if self._fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise MissingError(f"{self.uri}: {VOCAB_FILE} not found (captions have tokens)")
        with self._fs.open_input_stream(path) as f:
            try:
                vocab = json.loads(f.read().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{self.uri}/{VOCAB_FILE}: not valid JSON ({e})") from e
        _check_vocab(vocab, f"{self.uri}/{VOCAB_FILE}")
        return vocab

    def splits(self) -> list[str]:
        """The splits present in images.parquet, in train/val/test order."""
        col = pq.read_table(self._path(IMAGES_FILE), columns=["split"], filesystem=self._fs)
        present = set(pc.unique(col.column("split")).to_pylist())
        return [s for s in SPLITS if s in present]

    def split_sizes(self, split: str) -> tuple[int, int, int | None]:
        """(images, captions, constant captions per image or None) of one split, checking the
        captions as :meth:`read_split` does (ids, image references, tokens, features) without
        reading any image features: cheap enough for a driver to validate a big dataset."""
        if split not in SPLITS:
            raise InputError(f"split: expected one of {SPLITS}, got {split!r}")
        cap_where = f"{self.uri}/{CAPTIONS_FILE}"
        flt = [("split", "=", split)]
        imgs = pq.read_table(self._path(IMAGES_FILE), columns=["image_id"], filters=flt, filesystem=self._fs)
        if imgs.num_rows == 0:
            raise InputError(f"{self.uri}/{IMAGES_FILE}: no images in split {split!r}")
        image_ids = np.asarray(imgs.column("image_id").to_pylist(), dtype=object)
        _check_unique(image_ids, f"{self.uri}/{IMAGES_FILE}: column image_id")
        caps = pq.read_table(self._path(CAPTIONS_FILE), filters=flt, filesystem=self._fs)
        cap_ids = np.asarray(caps.column("caption_id").to_pylist(), dtype=object)
        _check_unique(cap_ids, f"{cap_where}: column caption_id")
        all_imgs = pq.read_table(self._path(IMAGES_FILE), columns=["image_id", "split"], filesystem=self._fs)
        all_map = dict(
            zip(all_imgs.column("image_id").to_pylist(), all_imgs.column("split").to_pylist(), strict=True)
        )
        img_idx, _ = _group_captions(
            np.asarray(caps.column("image_id").to_pylist()), cap_ids, image_ids, split, all_map, cap_where
        )
        if self.vocab is not None:
            _pad_tokens(caps.column("tokens"), len(self.vocab), cap_ids, f"{cap_where}: column tokens")
        if self.text_dim is not None:
            _to_numpy_list(caps.column("features"), (self.text_dim,), f"{cap_where}: column features")
        counts = np.bincount(img_idx, minlength=len(image_ids))
        per_image = int(counts[0]) if len(counts) and (counts == counts[0]).all() and counts[0] else None
        return len(image_ids), len(cap_ids), per_image

    def read_split(self, split: str, mean_regions: bool = False) -> PairedSplit:
        """Read one split; ``mean_regions`` averages region features to one vector per image."""
        if split not in SPLITS:
            raise InputError(f"split: expected one of {SPLITS}, got {split!r}")
        img_where, cap_where = f"{self.uri}/{IMAGES_FILE}", f"{self.uri}/{CAPTIONS_FILE}"
        flt = [("split", "=", split)]
        imgs = pq.read_table(self._path(IMAGES_FILE), filters=flt, filesystem=self._fs)
        caps = pq.read_table(self._path(CAPTIONS_FILE), filters=flt, filesystem=self._fs)
        if imgs.num_rows == 0:
            raise InputError(f"{img_where}: no images in split {split!r}")
        image_ids = np.asarray(imgs.column("image_id").to_pylist(), dtype=object)
        _check_unique(image_ids, f"{img_where}: column image_id")
        images = _to_numpy_list(
            imgs.column(self.image_column), self.image_shape, f"{img_where}: column {self.image_column}"
        )
        if mean_regions and images.ndim == 3:
            images = images.mean(axis=1)
        cap_ids = np.asarray(caps.column("caption_id").to_pylist(), dtype=object)
        _check_unique(cap_ids, f"{cap_where}: column caption_id")
        all_imgs = pq.read_table(self._path(IMAGES_FILE), columns=["image_id", "split"], filesystem=self._fs)
        all_map = dict(
            zip(all_imgs.column("image_id").to_pylist(), all_imgs.column("split").to_pylist(), strict=True)
        )
        img_idx, order = _group_captions(
            np.asarray(caps.column("image_id").to_pylist()), cap_ids, image_ids, split, all_map, cap_where
        )
        tokens = lengths = feats = None
        if self.vocab is not None:
            tokens, lengths = _pad_tokens(
                caps.column("tokens"), len(self.vocab), cap_ids, f"{cap_where}: column tokens"
            )
            tokens, lengths = tokens[order], lengths[order]
        if self.text_dim is not None:
            feats = _to_numpy_list(
                caps.column("features"), (self.text_dim,), f"{cap_where}: column features"
            )[order]
        counts = np.bincount(img_idx, minlength=len(image_ids))
        per_image = int(counts[0]) if len(counts) and (counts == counts[0]).all() else None
        return PairedSplit(
            split=split,
            image_ids=image_ids,
            images=images,
            caption_ids=cap_ids[order],
            caption_image_index=img_idx[order],
            tokens=tokens,
            lengths=lengths,
            text_features=feats,
            captions_per_image=per_image or None,
            vocab_size=0 if self.vocab is None else len(self.vocab),
        )


def _check_vocab(vocab: Any, where: str) -> None:
    if not isinstance(vocab, list) or len(vocab) < 2 or not all(isinstance(w, str) for w in vocab):
        raise InputError(f"{where}: expected a JSON list of >= 2 strings ('<pad>', '<unk>', ...)")
    if len(set(vocab)) != len(vocab):
        raise InputError(f"{where}: duplicate token in the vocabulary")


def open_paired_dataset(uri: str | os.PathLike) -> PairedDataset:
    """Open a paired dataset directory or URI (``s3://...``, ``gs://...``) for reading."""
    text = str(uri)
    if "://" in text:
        fs, root = pafs.FileSystem.from_uri(text)
    else:
        fs, root = pafs.LocalFileSystem(), str(Path(text).resolve())
        if not Path(root).is_dir():
            raise MissingError(f"{text}: paired dataset directory not found")
    return PairedDataset(text, fs, root)


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
            column: _fixed_list_array(arr),
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
        cols["features"] = _fixed_list_array(feats)
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
    _check_unique(np.asarray(list(images["image_id"]), dtype=object), "images: column image_id")
    _check_unique(np.asarray(list(captions["caption_id"]), dtype=object), "captions: column caption_id")
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
        _check_vocab(vocab, "vocab")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        pq.write_table(img_tab, tmp / IMAGES_FILE)
        pq.write_table(cap_tab, tmp / CAPTIONS_FILE)
        if vocab is not None:
            (tmp / VOCAB_FILE).write_text(json.dumps(vocab) + "\n", encoding="utf-8")
        check_paired_dataset(tmp)
    return out


def check_paired_dataset(path: str | os.PathLike) -> None:
    """Read every split of a dataset, raising InputError on the first problem found."""
    ds = open_paired_dataset(path)
    splits = ds.splits()
    cap_tab = pq.read_table(ds._path(CAPTIONS_FILE), columns=["caption_id", "split"], filesystem=ds._fs)
    extra = set(pc.unique(cap_tab.column("split")).to_pylist()) - set(splits)
    if extra:
        cap = cap_tab.filter(pc.field("split") == sorted(extra)[0]).column("caption_id")[0]
        raise InputError(
            f"captions: column split: caption {cap.as_py()!r} has split "
            f"{sorted(extra)[0]!r} that no image has"
        )
    for split in splits:
        ds.read_split(split)


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


def __getattr__(name: str) -> Any:
    """Re-export the sources of ``paired_sources`` lazily (that module imports this one)."""
    if name in _SOURCES:
        from scalable_xmr.data import paired_sources

        return getattr(paired_sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
