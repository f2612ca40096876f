"""Datasets: one ``dataset.json`` plus one Parquet table per modality (DESIGN.md §2).

A dataset is a directory (or any ``pyarrow.fs`` URI: ``file://``, ``s3://``, ``gs://``) holding

- ``dataset.json``: ``{"name", "n_classes", "multi_label", "class_names", "modalities": {m: {"dim",
  "kind"}}}``;
- ``<m>.parquet`` per modality (a file, or a directory of shards) with columns ``id: string``,
  ``split: string`` (train/val/test), ``labels: list<int32>`` (empty = unlabeled) and
  ``features: fixed_size_list<float32>[dim]``.

We write each split as its own row groups (train, val, test), so ``read_split`` can skip the other
splits by their row-group statistics. Memory: Parquet decoding is one copy into Arrow buffers;
after that ``features`` is a NumPy *view* of the Arrow buffer (read-only) whenever the split arrives
in one chunk (our files: one row group per split up to ~256 MB); otherwise ``combine_chunks`` makes
one more copy.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import atomic_path

SPLITS = ("train", "val", "test")
_INFO_KEYS = ("name", "n_classes", "multi_label", "class_names", "modalities")
_MODALITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModalityInfo:
    """One modality of a dataset: its name (= table file stem), feature dimension and kind."""

    name: str
    dim: int
    kind: str = "dense"


@dataclass(frozen=True)
class DatasetInfo:
    """The content of ``dataset.json``; checked on construction (raises ``InputError``)."""

    name: str
    n_classes: int
    multi_label: bool
    class_names: tuple[str, ...]
    modalities: dict[str, ModalityInfo] = field(hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        problem = _info_problem(self)
        if problem:
            raise InputError(f"DatasetInfo: {problem}")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "n_classes": self.n_classes,
            "multi_label": self.multi_label,
            "class_names": list(self.class_names),
            "modalities": {
                m.name: {"dim": m.dim, "kind": m.kind} for m in self.modalities.values()
            },
        }

    @classmethod
    def from_json(cls, d: dict, source: str) -> DatasetInfo:
        """Build from a parsed ``dataset.json``; unknown or missing keys raise naming ``source``."""
        if not isinstance(d, dict):
            raise InputError(f"{source}: expected a JSON object, got {type(d).__name__}")
        _check_keys(d, _INFO_KEYS, (), source)
        mods = d["modalities"]
        if not isinstance(mods, dict) or not mods:
            raise InputError(f"{source}: 'modalities' must be a non-empty object, got {mods!r}")
        modalities = {}
        for name, m in mods.items():
            where = f"{source}: modalities[{name!r}]"
            if not isinstance(m, dict):
                raise InputError(f"{where}: expected an object, got {m!r}")
            _check_keys(m, ("dim",), ("kind",), where)
            modalities[name] = ModalityInfo(name, m["dim"], m.get("kind", "dense"))
        names = d["class_names"]
        if not isinstance(names, list):
            raise InputError(f"{source}: 'class_names' must be a list, got {names!r}")
        try:
            return cls(d["name"], d["n_classes"], d["multi_label"], tuple(names), modalities)
        except InputError as e:
            raise InputError(f"{source}: {str(e).removeprefix('DatasetInfo: ')}") from None


def _check_keys(d: dict, required: Sequence[str], optional: Sequence[str], source: str) -> None:
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise InputError(
            f"{source}: unknown key(s) {unknown}; allowed: {list(required + optional)}"
        )
    missing = [k for k in required if k not in d]
    if missing:
        raise InputError(f"{source}: missing key(s) {missing}")


def _info_problem(info: DatasetInfo) -> str | None:
    """Why ``info`` is inconsistent, or None."""
    if not isinstance(info.name, str) or not info.name:
        return f"'name' must be a non-empty string, got {info.name!r}"
    if type(info.n_classes) is not int or info.n_classes < 1:
        return f"'n_classes' must be a positive integer, got {info.n_classes!r}"
    if not isinstance(info.multi_label, bool):
        return f"'multi_label' must be true or false, got {info.multi_label!r}"
    if len(info.class_names) != info.n_classes:
        return f"n_classes={info.n_classes} but class_names has {len(info.class_names)} entries"
    if not all(isinstance(c, str) for c in info.class_names) or len(set(info.class_names)) != len(
        info.class_names
    ):
        return f"'class_names' must be distinct strings, got {list(info.class_names)!r}"
    if not isinstance(info.modalities, dict) or not info.modalities:
        return "'modalities' must be a non-empty dict"
    for key, m in info.modalities.items():
        if not isinstance(m, ModalityInfo) or m.name != key:
            return f"modalities[{key!r}] must be a ModalityInfo named {key!r}, got {m!r}"
        if not isinstance(key, str) or not _MODALITY_RE.match(key):
            return f"modality name {key!r} must match {_MODALITY_RE.pattern}"
        if type(m.dim) is not int or m.dim < 1:
            return f"modality {key!r}: 'dim' must be a positive integer, got {m.dim!r}"
        if m.kind != "dense":
            return f"modality {key!r}: 'kind' must be 'dense', got {m.kind!r}"
    return None


@dataclass
class SplitData:
    """One split of one modality. ``features`` may be a read-only view of an Arrow buffer."""

    ids: np.ndarray  # (n,) object (str)
    labels: np.ndarray  # (n, n_classes) float32 multi-hot; unlabeled row = zeros
    features: np.ndarray  # (n, dim) float32, C-contiguous

    @property
    def labeled(self) -> np.ndarray:
        """(n,) bool: the row has at least one label."""
        return self.labels.any(axis=1)

    def label_indices(self) -> np.ndarray:
        """(n,) int64 class index per row; single-label data only."""
        counts = self.labels.sum(axis=1)
        bad = np.flatnonzero(counts != 1)
        if bad.size:
            i = bad[0]
            raise InputError(
                f"label_indices: row id {self.ids[i]!r} has {int(counts[i])} labels "
                "(need exactly 1)"
            )
        return self.labels.argmax(axis=1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------- Arrow <-> NumPy rows


@dataclass
class _Rows:
    """Rows of a table as NumPy: labels as CSR-style (offsets, values) lists."""

    ids: np.ndarray  # (n,) object
    offsets: np.ndarray  # (n+1,) int64 into values
    values: np.ndarray  # (nnz,) int64 label indices
    features: np.ndarray  # (n, dim) float32
    splits: np.ndarray | None  # (n,) object, when read

    def row_of_values(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.ids)), np.diff(self.offsets))  # (nnz,)


def _to_split(rows: _Rows, n_classes: int) -> SplitData:
    labels = np.zeros((len(rows.ids), n_classes), dtype=np.float32)  # (n, c)
    labels[rows.row_of_values(), rows.values] = 1.0
    return SplitData(rows.ids, labels, np.ascontiguousarray(rows.features))


def _schema_type_ok(t: pa.DataType, column: str) -> bool:
    if column in ("id", "split"):
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if column == "labels":
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(
            t.value_type
        )
    return pa.types.is_fixed_size_list(t) and t.value_type == pa.float32()


def _check_schema(schema: pa.Schema, path: str, dim: int | None, where: str) -> int:
    """Check the four columns' types; return the feature dimension."""
    expected = {
        "id": "string",
        "split": "string",
        "labels": "list<int32>",
        "features": "fixed_size_list<float32>[dim]",
    }
    for column, want in expected.items():
        if column not in schema.names:
            raise InputError(f"{path}: missing column {column!r} (have {schema.names})")
        got = schema.field(column).type
        if not _schema_type_ok(got, column):
            raise InputError(f"{path}: column {column!r} has type {got}, expected {want}")
    file_dim = schema.field("features").type.list_size
    if dim is not None and file_dim != dim:
        raise InputError(f"{path}: column 'features' has dim {file_dim} but {where} says {dim}")
    return file_dim


def _rows_from_table(table: pa.Table, path: str, dim: int) -> _Rows:
    for column in table.column_names:
        nulls = table.column(column).null_count
        if nulls:
            raise InputError(f"{path}: column {column!r} has {nulls} null value(s)")
    ids = table.column("id").to_numpy(zero_copy_only=False).astype(object)
    lab = table.column("labels").combine_chunks()
    if lab.values.null_count:
        raise InputError(f"{path}: column 'labels' has null label value(s)")
    offsets = lab.offsets.to_numpy().astype(np.int64)  # (n+1,)
    values = lab.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    feat = table.column("features").combine_chunks()  # one copy only if several chunks
    flat = feat.flatten()  # zero-copy slice of the child values
    if flat.null_count:
        raise InputError(f"{path}: column 'features' has null feature value(s)")
    features = flat.to_numpy(zero_copy_only=True).reshape(len(feat), dim)  # (n, dim) view
    splits = None
    if "split" in table.column_names:
        splits = table.column("split").to_numpy(zero_copy_only=False).astype(object)
    return _Rows(ids, offsets - offsets[0], values.astype(np.int64), features, splits)


def _check_rows(rows: _Rows, path: str, n_classes: int | None, multi_label: bool) -> None:
    """Split names, label range / count and finite features, naming the first bad row id."""
    if rows.splits is not None:
        bad = np.flatnonzero(~np.isin(rows.splits, SPLITS))
        if bad.size:
            i = bad[0]
            raise InputError(
                f"{path}: column 'split' has value {rows.splits[i]!r} at row id {rows.ids[i]!r}; "
                f"allowed: {', '.join(SPLITS)}"
            )
    row_of = rows.row_of_values()
    upper = np.inf if n_classes is None else n_classes
    bad = np.flatnonzero((rows.values < 0) | (rows.values >= upper))
    if bad.size:
        j = bad[0]
        allowed = ">= 0" if n_classes is None else f"in [0, {n_classes})"
        raise InputError(
            f"{path}: column 'labels' has value {rows.values[j]} at row id "
            f"{rows.ids[row_of[j]]!r}; labels must be {allowed}"
        )
    if not multi_label:
        counts = np.diff(rows.offsets)
        bad = np.flatnonzero(counts > 1)
        if bad.size:
            i = bad[0]
            held = rows.values[rows.offsets[i] : rows.offsets[i + 1]].tolist()
            raise InputError(
                f"{path}: column 'labels' row id {rows.ids[i]!r} has {len(held)} labels {held} "
                "but the dataset is single-label (multi_label false)"
            )
    finite = np.isfinite(rows.features).all(axis=1)
    if not finite.all():
        i = np.flatnonzero(~finite)[0]
        raise InputError(f"{path}: column 'features' has NaN or inf at row id {rows.ids[i]!r}")


def _check_unique(ids: np.ndarray, path: str) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        k = np.flatnonzero(counts > 1)[0]
        raise InputError(
            f"{path}: column 'id' has duplicate value {str(uniq[k])!r} ({counts[k]} rows); "
            "ids must be unique within a modality"
        )


def _validate_stream(
    dset: pads.Dataset, path: str, dim: int, n_classes: int, multi_label: bool
) -> None:
    """Check every row of a table in batches; every split must be non-empty."""
    counts = dict.fromkeys(SPLITS, 0)
    all_ids = []
    batch_size = max(1, 2**26 // (4 * dim))  # ~64 MB of features per batch
    try:
        batches = dset.to_batches(
            columns=["id", "split", "labels", "features"], batch_size=batch_size
        )
        for batch in batches:
            rows = _rows_from_table(pa.Table.from_batches([batch]), path, dim)
            _check_rows(rows, path, n_classes, multi_label)
            for s in SPLITS:
                counts[s] += int(np.count_nonzero(rows.splits == s))
            all_ids.append(rows.ids)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet table ({e})") from e
    _check_unique(np.concatenate(all_ids) if all_ids else np.array([], dtype=object), path)
    for s in SPLITS:
        if counts[s] == 0:
            raise InputError(
                f"{path}: column 'split' has no rows with value {s!r} "
                "(every modality needs train, val and test rows)"
            )


def _label_lists(labels: Any, n: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalise labels to (offsets (n+1,), values) int arrays; see write_modality_table."""
    arr = labels if isinstance(labels, np.ndarray) else None
    if arr is None and all(np.ndim(v) == 0 for v in labels):  # a plain list of ints
        arr = np.asarray(labels)
    if arr is not None and arr.dtype != object and arr.ndim == 2:  # multi-hot (n, c)
        if not np.isin(arr, (0, 1)).all():
            raise InputError(f"{path}: multi-hot labels must hold only 0 and 1")
        rows, values = np.nonzero(arr)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(arr)))])
    elif arr is not None and arr.dtype != object and arr.ndim == 1:  # one label per row
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{path}: labels must be integers, got dtype {arr.dtype}")
        values, offsets = arr.astype(np.int64), np.arange(len(arr) + 1)
    else:
        try:
            lists = [[int(v) for v in row] for row in labels]
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: labels must be lists of class indices ({e})") from e
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in lists], dtype=np.int64)])
        values = np.array([v for r in lists for v in r], dtype=np.int64)
    if len(offsets) != n + 1:
        raise InputError(f"{path}: labels have {len(offsets) - 1} rows but features have {n}")
    return offsets.astype(np.int64), values.astype(np.int64)


def _build_table(
    ids: Any,
    splits: Any,
    labels: Any,
    features: np.ndarray,
    path: str,
    n_classes: int | None = None,
    multi_label: bool = True,
) -> pa.Table:
    """Check the columns and build the Arrow table, rows ordered train, val, test."""
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[1] < 1 or not np.issubdtype(feats.dtype, np.number):
        raise InputError(f"{path}: features must be a numeric (n, dim) array, got {feats.shape}")
    feats = np.ascontiguousarray(feats, dtype=np.float32)  # (n, dim)
    n, dim = feats.shape
    ids = np.asarray(ids).astype(str).astype(object)
    splits = np.asarray(splits).astype(str).astype(object)
    for what, col in (("ids", ids), ("splits", splits)):
        if col.shape != (n,):
            raise InputError(f"{path}: {what} has shape {col.shape} but features have {n} rows")
    offsets, values = _label_lists(labels, n, path)
    rows = _Rows(ids, offsets, values, feats, splits)
    _check_rows(rows, path, n_classes, multi_label)
    _check_unique(ids, path)
    label_arr = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(values, pa.int32())
    )
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "split": pa.array(splits, pa.string()),
            "labels": label_arr,
            "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), dim),
        }
    )
    code = (splits == "val").astype(np.int8) + 2 * (splits == "test")  # train 0, val 1, test 2
    order = np.argsort(code, kind="stable")
    return table.take(pa.array(order)) if (np.diff(order) != 1).any() else table


def _write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """One group of row groups per split (train, val, test) so readers can skip the others."""
    dim = table.schema.field("features").type.list_size
    max_rows = max(1, 2**28 // (4 * dim))  # row groups of at most ~256 MB of features
    splits = table.column("split").to_numpy(zero_copy_only=False)
    start = 0
    with pq.ParquetWriter(path, table.schema, filesystem=fs) as writer:
        for s in SPLITS:
            k = int(np.count_nonzero(splits == s))
            if k:
                writer.write_table(table.slice(start, k), row_group_size=min(k, max_rows))
            start += k


# --------------------------------------------------------------------------- file systems


def _resolve(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a pyarrow.fs URI."""
    uri = os.fspath(uri)
    if filesystem is not None:
        return filesystem, uri
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise InputError(f"{uri}: not a usable file-system URI ({e})") from e


def _kind(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def _read_json(fs: pafs.FileSystem, path: str) -> Any:
    if _kind(fs, path) != pafs.FileType.File:
        raise MissingError(f"{path}: file not found")
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def _open_table(fs: pafs.FileSystem, path: str) -> pads.Dataset:
    if _kind(fs, path) == pafs.FileType.NotFound:
        raise MissingError(f"{path}: modality table not found")
    try:
        return pads.dataset(path, format="parquet", filesystem=fs)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet table ({e})") from e


# --------------------------------------------------------------------------- the dataset


class Dataset:
    """An opened dataset. Cheap to construct; every read goes to storage."""

    def __init__(self, uri: str, info: DatasetInfo, filesystem: pafs.FileSystem, root: str):
        self.uri = uri
        self.info = info
        self._fs = filesystem
        self._root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Dataset({self.uri!r}, name={self.info.name!r}, modalities={self.modalities})"

    @property
    def modalities(self) -> list[str]:
        return list(self.info.modalities)

    def table_path(self, modality: str) -> str:
        """Path (inside the dataset's file system) of the modality's Parquet table."""
        if modality not in self.info.modalities:
            raise InputError(f"{self.uri}: no modality {modality!r}; has {self.modalities}")
        return f"{self._root}/{modality}.parquet"

    def _table(self, modality: str) -> tuple[pads.Dataset, str, int]:
        path = self.table_path(modality)
        dset = _open_table(self._fs, path)
        dim = self.info.modalities[modality].dim
        _check_schema(dset.schema, path, dim, where="dataset.json")
        return dset, path, dim

    def read_split(self, modality: str, split: str) -> SplitData:
        """Rows of one split of one modality; reads only that table, split and needed columns."""
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        dset, path, dim = self._table(modality)
        try:
            table = dset.to_table(
                columns=["id", "labels", "features"], filter=pads.field("split") == split
            )
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: cannot read split {split!r} ({e})") from e
        if table.num_rows == 0:
            raise InputError(f"{path}: column 'split' has no rows with value {split!r}")
        rows = _rows_from_table(table, path, dim)
        _check_rows(rows, path, self.info.n_classes, self.info.multi_label)
        _check_unique(rows.ids, path)
        return _to_split(rows, self.info.n_classes)

    def split_sizes(self) -> dict[str, dict[str, int]]:
        """``{modality: {split: rows}}`` from the ``split`` column alone."""
        out = {}
        for m in self.modalities:
            dset, path, _ = self._table(m)
            splits = dset.to_table(columns=["split"]).column("split").to_numpy(zero_copy_only=False)
            out[m] = {s: int(np.count_nonzero(splits == s)) for s in SPLITS}
        return out

    def validate(self) -> None:
        """Full check of every table against ``dataset.json`` (streams, bounded memory)."""
        for m in self.modalities:
            dset, path, dim = self._table(m)
            _validate_stream(dset, path, dim, self.info.n_classes, self.info.multi_label)


def open_dataset(
    uri: str, validate: bool = True, filesystem: pafs.FileSystem | None = None
) -> Dataset:
    """Open a dataset directory or URI; ``validate`` runs the full :meth:`Dataset.validate`."""
    fs, root = _resolve(uri, filesystem)
    if _kind(fs, root) != pafs.FileType.Directory:
        raise MissingError(f"{uri}: dataset directory not found")
    source = f"{root.rstrip('/')}/dataset.json"
    info = DatasetInfo.from_json(_read_json(fs, source), source)
    ds = Dataset(os.fspath(uri), info, fs, root)
    if validate:
        ds.validate()
    return ds


def read_modality_table(
    path: str,
    n_classes: int,
    dim: int | None = None,
    multi_label: bool = True,
    filesystem: pafs.FileSystem | None = None,
) -> dict[str, SplitData]:
    """Read and fully validate a loose modality table (not inside a dataset): ``{split: data}``."""
    fs, p = _resolve(path, filesystem)
    dset = _open_table(fs, p)
    dim = _check_schema(dset.schema, p, dim, where="the caller")
    _validate_stream(dset, p, dim, n_classes, multi_label)
    table = dset.to_table(columns=["id", "split", "labels", "features"])
    splits = table.column("split").to_numpy(zero_copy_only=False)
    out = {}
    for s in SPLITS:
        rows = _rows_from_table(table.filter(pa.array(splits == s)), p, dim)
        out[s] = _to_split(rows, n_classes)
    return out


# --------------------------------------------------------------------------- writing


def write_modality_table(
    path: str,
    ids: Sequence[str] | np.ndarray,
    splits: Sequence[str] | np.ndarray,
    labels: Sequence[Sequence[int]] | np.ndarray,
    features: np.ndarray,
    filesystem: pafs.FileSystem | None = None,
) -> None:
    """Write one modality table (atomically on local disk).

    ``labels``: a list of int lists, an int array ``(n,)`` (one label per row) or a 0/1 multi-hot
    array ``(n, c)`` (always read as multi-hot, even ``(n, 1)``).
    """
    fs, p = _resolve(path, filesystem)
    table = _build_table(ids, splits, labels, features, p)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(p) as tmp:
            _write_table(fs, str(tmp), table)
    else:  # object stores: a single PUT is already all-or-nothing
        _write_table(fs, p, table)


def _check_target(fs: pafs.FileSystem, root: str, info: DatasetInfo, overwrite: bool) -> None:
    kind = _kind(fs, root)
    if kind == pafs.FileType.NotFound:
        return
    if kind != pafs.FileType.Directory:
        raise InputError(f"{root}: exists and is not a directory; refusing to replace it")
    meta = f"{root}/dataset.json"
    if _kind(fs, meta) == pafs.FileType.File:
        try:
            same = _read_json(fs, meta) == info.to_json()
        except InputError:
            same = False
        if not same and not overwrite:
            raise InputError(
                f"{root}: already holds a different dataset ({meta} differs); "
                "pass overwrite=True (--overwrite) to replace it"
            )
    elif fs.get_file_info(pafs.FileSelector(root)) and not overwrite:
        raise InputError(
            f"{root}: exists, is not empty and is not a dataset; "
            "pass overwrite=True (--overwrite) to replace it"
        )


def _write_into(
    fs: pafs.FileSystem, root: str, info: DatasetInfo, tables: dict, final: str
) -> None:
    """Check every table (errors name the final path), write them into ``root``, re-validate."""
    fs.create_dir(root)
    with fs.open_output_stream(f"{root}/dataset.json") as f:
        f.write((json.dumps(info.to_json(), indent=2) + "\n").encode("utf-8"))
    for m, (ids, splits, labels, features) in tables.items():
        name = f"{final}/{m}.parquet"
        table = _build_table(ids, splits, labels, features, name, info.n_classes, info.multi_label)
        dim = table.schema.field("features").type.list_size
        if dim != info.modalities[m].dim:
            raise InputError(
                f"{name}: features have dim {dim} but info says {info.modalities[m].dim}"
            )
        present = set(table.column("split").unique().to_pylist())
        for s in SPLITS:
            if s not in present:
                raise InputError(
                    f"{name}: column 'split' has no rows with value {s!r} "
                    "(every modality needs train, val and test rows)"
                )
        _write_table(fs, f"{root}/{m}.parquet", table)
    Dataset(root, info, fs, root).validate()


def write_dataset(
    uri: str,
    info: DatasetInfo,
    tables: dict[str, tuple[Any, Any, Any, np.ndarray]],
    overwrite: bool = False,
    filesystem: pafs.FileSystem | None = None,
) -> Dataset:
    """Write a whole dataset: into a temp dir beside ``uri``, validate, then rename into place.

    ``tables``: ``{modality: (ids, splits, labels, features)}`` as for :func:`write_modality_table`.
    Refuses to replace a different dataset (or a non-empty non-dataset directory) unless
    ``overwrite``; rewriting one with an identical ``dataset.json`` is allowed. On local disk the
    final rename is atomic; on object stores (no directory rename) the move is best effort.
    """
    fs, root = _resolve(uri, filesystem)
    root = root.rstrip("/")
    if set(tables) != set(info.modalities):
        raise InputError(
            f"write_dataset: tables have modalities {sorted(tables)} but info lists "
            f"{sorted(info.modalities)}"
        )
    _check_target(fs, root, info, overwrite)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(root) as tmp:
            _write_into(fs, str(tmp), info, tables, root)
    else:
        parent, base = posixpath.split(root)
        tmp = posixpath.join(parent, f".{base}.{uuid.uuid4().hex}.tmp")
        try:
            _write_into(fs, tmp, info, tables, root)
            if _kind(fs, root) != pafs.FileType.NotFound:
                fs.delete_dir(root)
            try:
                fs.move(tmp, root)
            except (pa.ArrowNotImplementedError, OSError):  # e.g. S3: no directory rename
                pafs.copy_files(tmp, root, source_filesystem=fs, destination_filesystem=fs)
        finally:
            if _kind(fs, tmp) != pafs.FileType.NotFound:
                fs.delete_dir(tmp)
    return Dataset(os.fspath(uri), info, fs, root)


def inspect_dataset(uri: str, filesystem: pafs.FileSystem | None = None) -> str:
    """A human-readable summary: name, classes, modalities with dims and split sizes."""
    ds = open_dataset(uri, validate=False, filesystem=filesystem)
    info, sizes = ds.info, ds.split_sizes()
    kind = "multi-label" if info.multi_label else "single-label"
    names = ", ".join(info.class_names[:10]) + (", ..." if info.n_classes > 10 else "")
    lines = [
        f"dataset   {info.name}  ({uri})",
        f"classes   {info.n_classes}, {kind}: {names}",
        "",
        f"{'modality':<12}{'dim':>8}{'train':>10}{'val':>10}{'test':>10}{'total':>10}",
    ]
    for m, mi in info.modalities.items():
        s = sizes[m]
        lines.append(
            f"{m:<12}{mi.dim:>8}{s['train']:>10}{s['val']:>10}{s['test']:>10}{sum(s.values()):>10}"
        )
    return "\n".join(lines)


__all__ = [
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "ModalityInfo",
    "SplitData",
    "inspect_dataset",
    "open_dataset",
    "read_modality_table",
    "write_dataset",
    "write_modality_table",
]
