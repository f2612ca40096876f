"""Atomic writes and small file helpers.

Every artifact scalable_xmr writes goes to a temporary name in the destination directory first and
is then renamed over the final name (``os.replace`` is atomic on POSIX), so a job killed halfway
never leaves a half-written file where a reader would take it for a complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.uris import absolute, is_remote, local_path, split_uri

# Called with a path after it changed (written, renamed into place or removed). The run store
# registers its object-storage mirror here (store/remote.py), so each write is uploaded.
after_write: list[Callable[[Path], None]] = []


def written(path: str | os.PathLike) -> None:
    """Tell the ``after_write`` hooks that ``path`` (a file or directory, or a path just removed)
    changed outside :func:`atomic_path` (a rename, a copy, a delete)."""
    for hook in after_write:
        hook(Path(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Works for files and for directories (the caller creates whatever it likes at the yielded path).
    On an exception the temporary is removed and ``path`` is left exactly as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        try:
            yield target
        except OSError as e:  # a full or read-only disk: name the file being written, not a temp
            if e.errno is None or e.filename not in (None, str(target)):
                raise
            raise OSError(e.errno, e.strerror, str(final)) from e
        if not target.exists():
            raise RuntimeError(f"atomic write of {final} produced nothing")
        if target.is_dir() and final.exists():
            # Directories cannot be os.replace'd over a non-empty one: move the old one aside first.
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    written(final)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:

    p = Path(path)
    if not p.is_file():
        raise MissingError(f"{p}: file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid JSON ({e})") from e


absolute_uri = absolute  # the one local-path-or-URI rule lives in scalable_xmr.uris


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """One line unless ``path`` (a file or directory to create or update) can be written: its
    nearest existing ancestor must be a directory this process can create files in. Jobs call it
    before Ray starts, so an unwritable output costs nothing."""
    if is_remote(path):
        return  # object storage: the filesystem layer reports its own errors
    target = local_path(path).resolve()
    ancestor = target if target.exists() else next(p for p in target.parents if p.exists())
    if not ancestor.is_dir():
        raise InputError(f"{flag} {path}: {ancestor} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot write in {ancestor} ({e.strerror})") from None


_CREDENTIAL_VARS = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI")
_filesystems: dict[tuple, Any] = {}


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the standard variables name (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _has_s3_credentials() -> bool:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(v) for v in _CREDENTIAL_VARS):
        return True
    files = (env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"),
             env.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config"))  # profiles, roles
    return any(os.path.isfile(f) for f in files)


def open_uri(uri: str, what: str = "") -> tuple[Any, str]:
    """(pyarrow filesystem, path) of a ``scheme://...`` URI, checked before any work: an ``s3://``
    URI needs credentials configured (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile,
    ``~/.aws/credentials`` or ``~/.aws/config``; an EC2 instance role only through a profile, since
    probing the metadata service off EC2 hangs) and an existing bucket; ``AWS_ENDPOINT_URL[_S3]``
    names an S3-compatible server (pyarrow reads it itself). One line naming the URI otherwise."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    label = f"{what} {uri}".strip()
    scheme, rest = split_uri(uri)
    if scheme == "s3" and not _has_s3_credentials():
        raise InputError(f"{label}: no S3 credentials configured; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for an "
                         "S3-compatible server")
    bucket = rest.split("/", 1)[0]
    key = (bucket, s3_endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    cacheable = scheme == "s3" and "?" not in uri  # a URI with options builds its own
    try:
        if cacheable and key in _filesystems:  # checked once per process
            return _filesystems[key], rest.rstrip("/")
        fs, path = pafs.FileSystem.from_uri(uri)
        if scheme == "s3" and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise InputError(f"{label}: bucket {bucket!r} does not exist (endpoint "
                             f"{s3_endpoint() or 'AWS S3'})")
        if cacheable:
            _filesystems[key] = fs
    except (pa.ArrowException, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{label}: not a usable file-system URI ({first})") from None
    return fs, path.rstrip("/")
