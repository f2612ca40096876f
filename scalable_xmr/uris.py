"""Where a target lives: the one rule telling a local path from a URI.

A *target* is what a user names for a run, a sweep's storage or a dataset (``--run``, ``--storage``,
``--data``, ``--out``, ``load_run``): a local path or a URI ``scheme://...``.

- A target that starts with ``scheme://`` (RFC 3986 scheme, case-insensitive) is a URI; anything
  else is a local path (``runs/x``, ``/abs/x``, ``~/x`` with ``~`` expanded).
- ``file://`` is **local**: ``file:///abs/path`` is the path ``/abs/path`` (percent escapes
  decoded, as ``Path.as_uri`` writes them and pyarrow reads them). Only an empty host is a path on
  this machine: ``file://host/x`` is refused, as pyarrow refuses it.
- Every other URI is **remote** (:func:`is_remote`): object storage the run store mirrors
  (``s3://``) or a pyarrow file system a dataset is read through (``gs://``, ``hdfs://``).
- What a job records for other processes is :func:`absolute`: a local path resolved, a URI as
  given (``file:///...`` is absolute already).

MLflow tracking URIs are not targets: ``sqlite:///rel.db``, ``http://...`` and MLflow's ``file:``
forms follow MLflow's own rules (``tracking.tracker.absolute_tracking_uri``,
``distributed.submission.relative_local_path``), which take only :func:`scheme` from here.

Example:
    >>> is_remote("s3://bucket/runs/x"), is_remote("file:///tmp/run"), is_remote("runs/x")
    (True, False, False)
    >>> local_path("file:///tmp/a%20b")
    PosixPath('/tmp/a b')
    >>> scheme("S3://bucket/key"), scheme("/tmp/x")
    ('s3', None)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from scalable_xmr.errors import InputError

_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
LOCAL_SCHEME = "file"


def scheme(target: str | os.PathLike) -> str | None:
    """The lower-cased scheme of a ``scheme://...`` URI; None for a local path."""
    found = _URI.match(os.fspath(target))
    return found.group(1).lower() if found else None


def split_uri(uri: str | os.PathLike) -> tuple[str, str]:
    """``(scheme, rest)`` of a URI: ``s3://bucket/key`` -> ``("s3", "bucket/key")``."""
    text = os.fspath(uri)
    found = _URI.match(text)
    if found is None:
        raise ValueError(f"{text!r} is a path, not a scheme:// URI")
    return found.group(1).lower(), text[found.end():]


def is_remote(target: str | os.PathLike) -> bool:
    """True for a URI other than ``file://`` (``s3://``, ``gs://``...): not a path on this machine."""
    found = scheme(target)
    return found is not None and found != LOCAL_SCHEME


def local_path(target: str | os.PathLike) -> Path:
    """The local path a plain path or a ``file:///`` URI names, ``~`` expanded, not resolved.

    A remote URI is a ValueError (check :func:`is_remote` first); ``file://host/...`` an
    InputError naming it."""
    text = os.fspath(target)
    found = scheme(text)
    if found is None:
        return Path(text).expanduser()
    if found != LOCAL_SCHEME:
        raise ValueError(f"{text!r} is a {found}:// URI, not a local path")
    rest = split_uri(text)[1]
    if not rest.startswith("/"):
        raise InputError(f"{text}: a file:// URI names a path on this machine, file:///absolute/path "
                         f"(host {rest.split('/', 1)[0]!r} given)")
    return Path(unquote(rest))


def absolute(target: str | os.PathLike) -> str:
    """A URI as given; a local path made absolute (actors and Tune trials run in other working
    directories)."""
    text = os.fspath(target)
    return text if scheme(text) is not None else str(Path(text).expanduser().resolve())
