"""Every change to a file outside an atomic write -- a remove, a rename into place, a copy, an
appended line -- with the after-write hook told by the change itself (io.hooks), so an
object-storage mirror follows without a hand-placed call at each writer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from scalable_xmr.io.hooks import written


def remove(path: str | os.PathLike, missing_ok: bool = True) -> None:
    """Remove the file or folder ``path`` (a folder with all it holds); the hook hears it, also
    when it was not there (a mirror's bucket may still hold it)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=missing_ok)
    elif p.exists() or p.is_symlink() or not missing_ok:
        p.unlink()
    written(p)


def replace(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename ``source`` to ``dest`` (one atomic rename: a folder appears whole); the hook hears
    ``dest`` (an object store has no rename: the mirror uploads it)."""
    os.replace(source, dest)
    written(dest)


def copy(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy the file ``source`` to ``dest``; the hook hears ``dest``."""
    shutil.copyfile(source, dest)
    written(dest)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (created if absent); the hook hears it (appended, not renamed:
    a mirror uploads the file as it is now)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    written(path)
