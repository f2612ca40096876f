"""Atomic writes and small file helpers, by responsibility:

- ``io.atomic``: :func:`atomic_path` (temporary, then rename), ``atomic_write_bytes`` /
  ``atomic_write_text``, and ``check_writable`` (an output refused before any work);
- ``io.jsonfile``: ``atomic_write_json`` and ``read_json`` (one line for a missing or bad file);
- ``io.filesystems``: ``open_uri`` (a remote URI as a pyarrow file system, S3 credentials and bucket
  checked, one per bucket cached) and ``s3_endpoint``;
- ``io.hooks``: ``after_write`` and ``written`` (the object-storage mirror hears every change);
- ``io.fileops``: ``remove``, ``replace``, ``copy``, ``append_text``: changes outside an atomic write,
  each telling the hook itself (imported as ``from scalable_xmr.io import fileops``);
- ``absolute_uri`` is :func:`scalable_xmr.uris.absolute` (the one local-path-or-URI rule lives in
  ``scalable_xmr.uris``), re-exported here under its old name.

Modules of this package import each other by submodule (``from scalable_xmr.io.atomic import
...``); the rest of the package may import the names below from ``scalable_xmr.io``.
"""

from scalable_xmr.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, check_writable
from scalable_xmr.io.filesystems import open_uri, s3_endpoint
from scalable_xmr.io.hooks import after_write, written
from scalable_xmr.io.jsonfile import atomic_write_json, read_json
from scalable_xmr.uris import absolute as absolute_uri

__all__ = ["absolute_uri", "after_write", "atomic_path", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "check_writable", "open_uri", "read_json", "s3_endpoint", "written"]
