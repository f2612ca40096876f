"""Datasets: one ``dataset.json`` plus one Parquet table per modality (docs/data.md).

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

``dataset.json`` is modelled in ``data/dataset_info.py``, one modality table in
``data/modality_table.py`` and paths / URIs in ``data/filesystem.py``; their public names are
re-exported here.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scalable_xmr.data.filesystem import file_type, open_table, read_json_at, resolve_uri, source_identity
from scalable_xmr.data.modality.info import SPLITS, DatasetInfo, ModalityInfo
from scalable_xmr.data.modality.table import (
    SplitData,
    build_table,
    check_rows,
    check_schema,
    check_unique_ids,
    read_modality_table,
    rows_from_table,
    to_split,
    validate_stream,
    write_modality_table,
    write_table_by_split,
)
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import atomic_path

READ_BUFFER_BYTES = 1 << 20  # split_batches' read buffer: a split is streamed a page at a time


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

    def source_identity(self, modality: str) -> tuple | None:
        """What identifies the files a read of ``modality`` depends on (dataset.json and its
        table): sizes and modification times; None when the file system has no times."""
        return source_identity(self._fs, [f"{self._root}/dataset.json", self.table_path(modality)])

    def _table(self, modality: str) -> tuple[pads.Dataset, str, int]:
        path = self.table_path(modality)
        dset = open_table(self._fs, path)
        dim = self.info.modalities[modality].dim
        check_schema(dset.schema, path, dim, where="dataset.json")
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
        rows = rows_from_table(table, path, dim)
        check_rows(rows, path, self.info.n_classes, self.info.multi_label)
        check_unique_ids(rows.ids, path)
        return to_split(rows, self.info.n_classes)

    def iter_split(self, modality: str, split: str, batch_rows: int) -> Iterator[SplitData]:
        """The rows of one split in table order, at most ``batch_rows`` at a time: streamed from
        storage, so memory holds about one batch (a streaming trainer's val and test splits)."""
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        dset, path, dim = self._table(modality)
        for batch in split_batches(dset, split, ["id", "labels", "features"], batch_rows):
            if batch.num_rows:
                rows = rows_from_table(pa.Table.from_batches([batch]), path, dim)
                yield to_split(rows, self.info.n_classes)

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
            validate_stream(dset, path, dim, self.info.n_classes, self.info.multi_label)


def split_batches(dset: pads.FileSystemDataset, split: str, columns: list[str],
                  batch_rows: int) -> Iterator[pa.RecordBatch]:
    """``columns`` of the rows of ``split``, file by file in the table's order, at most
    ``batch_rows`` a batch. pyarrow's file reader decodes a page at a time through a 1 MiB
    buffered stream; the dataset scanner decodes whole row groups (~3-6 x a row group's bytes
    held, and kept by the allocator: measured 0.6 GB for 64 MiB row groups). Row groups whose
    ``split`` statistics exclude ``split`` are skipped."""
    for fragment in dset.get_fragments():
        with dset.filesystem.open_input_file(fragment.path) as source:
            file = pq.ParquetFile(source, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
            meta = file.metadata
            leaf = [file.schema.column(k).path for k in range(len(file.schema))].index("split")
            groups = [g for g in range(meta.num_row_groups)
                      if _may_hold(meta.row_group(g).column(leaf).statistics, split)]
            for batch in file.iter_batches(batch_size=batch_rows, row_groups=groups,
                                           columns=[*columns, "split"]):
                yield batch.filter(pc.equal(batch.column("split"), split)).select(columns)


def _may_hold(stats: Any, split: str) -> bool:
    return stats is None or not stats.has_min_max or stats.min <= split <= stats.max


def open_dataset(
    uri: str, validate: bool = True, filesystem: pafs.FileSystem | None = None
) -> Dataset:
    """Open a dataset directory or URI; ``validate`` runs the full :meth:`Dataset.validate`."""
    fs, root = resolve_uri(uri, filesystem)
    if file_type(fs, root) != pafs.FileType.Directory:
        raise MissingError(f"{uri}: dataset directory not found")
    source = f"{root.rstrip('/')}/dataset.json"
    info = DatasetInfo.from_json(read_json_at(fs, source), source)
    ds = Dataset(os.fspath(uri), info, fs, root)
    if validate:
        ds.validate()
    return ds


def _check_target(fs: pafs.FileSystem, root: str, info: DatasetInfo, overwrite: bool) -> None:
    kind = file_type(fs, root)
    if kind == pafs.FileType.NotFound:
        return
    if kind != pafs.FileType.Directory:
        raise InputError(f"{root}: exists and is not a directory; refusing to replace it")
    meta = f"{root}/dataset.json"
    if file_type(fs, meta) == pafs.FileType.File:
        try:
            same = read_json_at(fs, meta) == info.to_json()
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
        table = build_table(ids, splits, labels, features, name, info.n_classes, info.multi_label)
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
        write_table_by_split(fs, f"{root}/{m}.parquet", table)
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
    fs, root = resolve_uri(uri, filesystem)
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
            if file_type(fs, root) != pafs.FileType.NotFound:
                fs.delete_dir(root)
            try:
                fs.move(tmp, root)
            except (pa.ArrowNotImplementedError, OSError):  # e.g. S3: no directory rename
                pafs.copy_files(tmp, root, source_filesystem=fs, destination_filesystem=fs)
        finally:
            if file_type(fs, tmp) != pafs.FileType.NotFound:
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
