"""Atomic writes: a temporary name in the destination directory, then a rename.

Every artifact scalable_xmr writes goes to a temporary name in the destination directory first and
is then renamed over the final name (``os.replace`` is atomic on POSIX), so a job killed halfway
never leaves a half-written file where a reader would take it for a complete one. Each finished
write is announced to the after-write hook (``io.hooks``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scalable_xmr.errors import InputError
from scalable_xmr.io.hooks import written
from scalable_xmr.uris import is_remote, local_path


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
