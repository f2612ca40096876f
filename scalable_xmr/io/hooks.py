"""The after-write hook: who hears that a file changed.

The run store registers its object-storage mirror here (``store/remote.py`` appends its ``push``),
so each change under a mirror is uploaded; :func:`~scalable_xmr.io.atomic.atomic_path` calls
:func:`written` itself, and so does every change in :mod:`scalable_xmr.io.fileops` (remove,
replace, copy, append): writers never call it by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# Called with a path after it changed (written, renamed into place or removed). The run store
# registers its object-storage mirror here (store/remote.py), so each write is uploaded.
after_write: list[Callable[[Path], None]] = []


def written(path: str | os.PathLike) -> None:
    """Tell the ``after_write`` hooks that ``path`` (a file or directory, or a path just removed)
    changed outside :func:`atomic_path` (a rename, a copy, a delete)."""
    for hook in after_write:
        hook(Path(path))
