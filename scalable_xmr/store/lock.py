"""One job at a time per run directory: ``<run>/.lock`` names the job that holds it.

A training, resume or add-modality job takes the lock before it decides anything about the
directory (and before Ray starts) and gives it back when it ends, however it ends. A second job on
the same directory gets one line naming the holder (pid, host, command, since when).

The kernel arbitrates: the holder keeps an exclusive ``flock`` on the file, which the kernel drops
when the process dies, even by SIGKILL. A lock file left behind by a dead job is therefore stale by
definition; the next job takes it over and says whose it was. (``flock`` also holds across hosts on
NFSv4; on a file system without locks the job warns and runs unlocked.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from scalable_xmr.errors import RunStateError
from scalable_xmr.store.meta import now_iso

LOCK_NAME = ".lock"


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another job (starting up)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command', '?')})")


def read_holder(path: Path) -> dict | None:
    """The lock's record, None when there is no lock; an unreadable one counts as held by nobody."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def run_lock(root: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``<root>/.lock`` for the body (``root`` is created when missing)."""
    root = Path(root)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(),
          "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
    fd = _acquire(root, path)
    try:
        if fd is not None:
            previous = os.pread(fd, 1 << 16, 0)
            if previous.strip():
                holder = read_holder(path) or {}
                warnings.warn(f"{root}: took over a stale lock ({describe(holder)}: that job is gone)",
                              stacklevel=3)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        yield path
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # still holding it: nobody can take the file we remove
            os.close(fd)
        if created:  # a job refused before it wrote anything leaves no empty directory behind
            with contextlib.suppress(OSError):
                root.rmdir()


def _acquire(root: Path, path: Path) -> int | None:
    """An fd holding the exclusive flock on ``path`` (the file itself, not one just unlinked)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(path) or {}
            raise RunStateError(f"{root}: in use by {describe(holder)}; wait for it to end") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            warnings.warn(f"{root}: this file system cannot lock ({e.strerror}); run one job at a "
                          "time on this run", stacklevel=4)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed it between our open and flock: try the new file
