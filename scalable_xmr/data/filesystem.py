"""Local paths (a ``file:///`` URI is one) and ``pyarrow.fs`` URIs (``s3://``, ``gs://``) of datasets."""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import open_uri
from scalable_xmr.uris import is_remote, local_path


def resolve_uri(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path (or ``file:///`` URI) or a remote pyarrow.fs URI."""
    uri = os.fspath(uri)
    if filesystem is not None:
        return filesystem, uri
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    return open_uri(uri)  # s3: credentials and bucket checked, one line naming the URI


def file_type(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def source_identity(fs: pafs.FileSystem, paths: str | list[str]) -> tuple[tuple[str, int, int], ...] | None:
    """``(path, size, mtime_ns)`` of every file at or under ``paths``: equal identities mean the
    same files, unchanged. None when a file system gives no modification time."""
    out = []
    for path in [paths] if isinstance(paths, str) else paths:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:  # a table of shards: every file in it
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        else:
            infos = [info]
        for i in sorted(infos, key=lambda i: i.path):
            if i.type != pafs.FileType.File:
                continue
            if i.mtime_ns is None:
                return None
            out.append((i.path, int(i.size), int(i.mtime_ns)))
    return tuple(out)


def read_json_at(fs: pafs.FileSystem, path: str) -> Any:
    if file_type(fs, path) != pafs.FileType.File:
        raise MissingError(f"{path}: file not found")
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def open_table(fs: pafs.FileSystem, path: str) -> pads.Dataset:
    if file_type(fs, path) == pafs.FileType.NotFound:
        raise MissingError(f"{path}: modality table not found")
    try:
        return pads.dataset(path, format="parquet", filesystem=fs)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet table ({e})") from e
