"""Reading a paired image-text dataset: :class:`PairedDataset` and one :class:`PairedSplit` of it,
captions grouped by image (the VSE++ R@K protocol, caption j -> image j // n)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scalable_xmr.data.filesystem import resolve_uri
from scalable_xmr.data.paired.format import (
    CAPTIONS_FILE,
    IMAGES_FILE,
    SPLITS,
    VOCAB_FILE,
    check_unique_ids,
    check_vocab,
    group_captions,
    list_shape,
    pad_tokens,
    to_numpy_list,
)
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.uris import is_remote, local_path


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
        self.image_shape = list_shape(img.field(self.image_column).type, where)
        if len(self.image_shape) != (1 if kinds[0] == "features" else 2):
            raise InputError(f"{where}: inconsistent region array type {img.field(self.image_column).type}")
        self.text_dim: int | None = None
        if "features" in cap.names:
            shape = list_shape(cap.field("features").type, f"{self.uri}/{CAPTIONS_FILE}")
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
        check_vocab(vocab, f"{self.uri}/{VOCAB_FILE}")
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
        _, image_ids = self._split_images(split, columns=["image_id"])
        caps, cap_ids, img_idx, _ = self._split_captions(split, image_ids)
        cap_where = f"{self.uri}/{CAPTIONS_FILE}"
        if self.vocab is not None:
            pad_tokens(caps.column("tokens"), len(self.vocab), cap_ids, f"{cap_where}: column tokens")
        if self.text_dim is not None:
            to_numpy_list(caps.column("features"), (self.text_dim,), f"{cap_where}: column features")
        return len(image_ids), len(cap_ids), _captions_per_image(img_idx, len(image_ids))

    def _split_images(self, split: str, columns: list[str] | None = None):
        """(images.parquet rows of ``split``, ``columns`` only; their image ids, checked unique)."""
        if split not in SPLITS:
            raise InputError(f"split: expected one of {SPLITS}, got {split!r}")
        where = f"{self.uri}/{IMAGES_FILE}"
        imgs = pq.read_table(self._path(IMAGES_FILE), columns=columns, filters=[("split", "=", split)],
                             filesystem=self._fs)
        if imgs.num_rows == 0:
            raise InputError(f"{where}: no images in split {split!r}")
        image_ids = np.asarray(imgs.column("image_id").to_pylist(), dtype=object)
        check_unique_ids(image_ids, f"{where}: column image_id")
        return imgs, image_ids

    def _split_captions(self, split: str, image_ids: np.ndarray):
        """(captions table, caption ids, image index per caption, order grouping them by image)."""
        where = f"{self.uri}/{CAPTIONS_FILE}"
        caps = pq.read_table(self._path(CAPTIONS_FILE), filters=[("split", "=", split)], filesystem=self._fs)
        cap_ids = np.asarray(caps.column("caption_id").to_pylist(), dtype=object)
        check_unique_ids(cap_ids, f"{where}: column caption_id")
        # every image's split, only to say which split a wrongly referenced image is in
        all_imgs = pq.read_table(self._path(IMAGES_FILE), columns=["image_id", "split"], filesystem=self._fs)
        all_map = dict(
            zip(all_imgs.column("image_id").to_pylist(), all_imgs.column("split").to_pylist(), strict=True)
        )
        img_idx, order = group_captions(
            np.asarray(caps.column("image_id").to_pylist()), cap_ids, image_ids, split, all_map, where
        )
        return caps, cap_ids, img_idx, order

    def read_split(self, split: str, mean_regions: bool = False) -> PairedSplit:
        """Read one split; ``mean_regions`` averages region features to one vector per image."""
        img_where, cap_where = f"{self.uri}/{IMAGES_FILE}", f"{self.uri}/{CAPTIONS_FILE}"
        imgs, image_ids = self._split_images(split)
        images = to_numpy_list(
            imgs.column(self.image_column), self.image_shape, f"{img_where}: column {self.image_column}"
        )
        if mean_regions and images.ndim == 3:
            images = images.mean(axis=1)
        caps, cap_ids, img_idx, order = self._split_captions(split, image_ids)
        tokens = lengths = feats = None
        if self.vocab is not None:
            tokens, lengths = pad_tokens(
                caps.column("tokens"), len(self.vocab), cap_ids, f"{cap_where}: column tokens"
            )
            tokens, lengths = tokens[order], lengths[order]
        if self.text_dim is not None:
            feats = to_numpy_list(
                caps.column("features"), (self.text_dim,), f"{cap_where}: column features"
            )[order]
        return PairedSplit(
            split=split,
            image_ids=image_ids,
            images=images,
            caption_ids=cap_ids[order],
            caption_image_index=img_idx[order],
            tokens=tokens,
            lengths=lengths,
            text_features=feats,
            captions_per_image=_captions_per_image(img_idx, len(image_ids)),
            vocab_size=0 if self.vocab is None else len(self.vocab),
        )


def _captions_per_image(img_idx: np.ndarray, n_images: int) -> int | None:
    """The number of captions every image has, or None when it varies (or is 0)."""
    counts = np.bincount(img_idx, minlength=n_images)
    return int(counts[0]) if len(counts) and (counts == counts[0]).all() and counts[0] else None


def open_paired_dataset(uri: str | os.PathLike) -> PairedDataset:
    """Open a paired dataset directory (or ``file:///`` URI) or a remote URI (``s3://...``,
    ``gs://...``) for reading."""
    text = str(uri)
    if is_remote(text):
        fs, root = resolve_uri(text)  # s3: credentials and bucket checked, one line naming the URI
    else:
        fs, root = pafs.LocalFileSystem(), str(local_path(text).resolve())
        if not Path(root).is_dir():
            raise MissingError(f"{text}: paired dataset directory not found")
    return PairedDataset(text, fs, root)


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


def inspect_paired_dataset(path: str | os.PathLike) -> str:
    """A human-readable summary of a paired dataset: images, captions per split, text kind."""
    ds = open_paired_dataset(path)
    text = "tokens" if ds.vocab is not None else "dense features"
    lines = [f"paired dataset  {path}  (captions as {text}"
             + (f", vocabulary {len(ds.vocab)})" if ds.vocab is not None else ")"),
             "", f"{'split':<8}{'images':>10}{'captions':>10}{'per image':>11}"]
    for split in ds.splits():
        n_img, n_cap, per = ds.split_sizes(split)
        lines.append(f"{split:<8}{n_img:>10}{n_cap:>10}{per if per is not None else 'varies':>11}")
    return "\n".join(lines)
