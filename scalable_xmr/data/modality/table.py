"""One modality table (``<m>.parquet``): Arrow <-> NumPy rows, their checks, reading and writing.

Columns ``id: string``, ``split: string`` (train/val/test), ``labels: list<int32>`` (empty =
unlabeled) and ``features: fixed_size_list<float32>[dim]``; each split is written as its own row
groups (train, val, test) so readers can skip the other splits (see ``data/dataset.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scalable_xmr.data.filesystem import open_table, resolve_uri
from scalable_xmr.data.modality.info import SPLITS
from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_path


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


def to_split(rows: _Rows, n_classes: int) -> SplitData:
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


def check_schema(schema: pa.Schema, path: str, dim: int | None, where: str) -> int:
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


def rows_from_table(table: pa.Table, path: str, dim: int) -> _Rows:
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


def check_rows(rows: _Rows, path: str, n_classes: int | None, multi_label: bool) -> None:
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


def check_unique_ids(ids: np.ndarray, path: str) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        k = np.flatnonzero(counts > 1)[0]
        raise InputError(
            f"{path}: column 'id' has duplicate value {str(uniq[k])!r} ({counts[k]} rows); "
            "ids must be unique within a modality"
        )


def validate_stream(
    dset: pads.Dataset, path: str, dim: int, n_classes: int, multi_label: bool
) -> None:
    """Check every row of a table in batches; every split must be non-empty."""
    counts = dict.fromkeys(SPLITS, 0)
    labelled_test = 0
    all_ids = []
    batch_size = max(1, 2**26 // (4 * dim))  # ~64 MB of features per batch
    try:
        batches = dset.to_batches(
            columns=["id", "split", "labels", "features"], batch_size=batch_size
        )
        for batch in batches:
            rows = rows_from_table(pa.Table.from_batches([batch]), path, dim)
            check_rows(rows, path, n_classes, multi_label)
            for s in SPLITS:
                counts[s] += int(np.count_nonzero(rows.splits == s))
            labelled_test += int(np.count_nonzero((rows.splits == "test") & (np.diff(rows.offsets) > 0)))
            all_ids.append(rows.ids)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet table ({e})") from e
    check_unique_ids(np.concatenate(all_ids) if all_ids else np.array([], dtype=object), path)
    for s in SPLITS:
        if counts[s] == 0:
            raise InputError(
                f"{path}: column 'split' has no rows with value {s!r} "
                "(every modality needs train, val and test rows)"
            )
    check_labelled_test(labelled_test, path)


def check_labelled_test(n_labelled: int, path: str) -> None:
    """mAP ranks test items by shared labels: a test split without one labelled row scores nothing."""
    if n_labelled == 0:
        raise InputError(f"{path}: the test split has no labelled row (labels=[] everywhere); mAP needs "
                         "labels, unlabelled rows only train the reconstruction term")


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


def build_table(
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
    check_rows(rows, path, n_classes, multi_label)
    check_unique_ids(ids, path)
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


def write_table_by_split(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
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


def read_modality_table(
    path: str,
    n_classes: int,
    dim: int | None = None,
    multi_label: bool = True,
    filesystem: pafs.FileSystem | None = None,
) -> dict[str, SplitData]:
    """Read and fully validate a loose modality table (not inside a dataset): ``{split: data}``."""
    fs, p = resolve_uri(path, filesystem)
    dset = open_table(fs, p)
    dim = check_schema(dset.schema, p, dim, where="the caller")
    validate_stream(dset, p, dim, n_classes, multi_label)
    table = dset.to_table(columns=["id", "split", "labels", "features"])
    splits = table.column("split").to_numpy(zero_copy_only=False)
    out = {}
    for s in SPLITS:
        rows = rows_from_table(table.filter(pa.array(splits == s)), p, dim)
        out[s] = to_split(rows, n_classes)
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
    fs, p = resolve_uri(path, filesystem)
    table = build_table(ids, splits, labels, features, p)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(p) as tmp:
            write_table_by_split(fs, str(tmp), table)
    else:  # object stores: a single PUT is already all-or-nothing
        write_table_by_split(fs, p, table)


def check_finite_matrix(x: np.ndarray, path: str, key: str) -> None:
    """A converter's input matrix holds only finite numbers: else one line naming the input file,
    its key and the first bad row and column (the output table is never written)."""
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"{path}: key {key!r} has {x[i, j]} at row {i}, column {j}; features must be "
                         "finite numbers")
