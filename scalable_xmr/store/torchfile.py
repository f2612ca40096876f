"""Model and checkpoint files you can trust: a ``torch.save`` payload behind a checksum.

A file is ``b"XMRTORCH1"`` + the SHA-256 of the payload (32 bytes) + the payload, written
atomically (temporary file, then rename). :func:`load` verifies the digest before anything is
unpickled (and unpickles with ``weights_only=True``), so a truncated or overwritten file is named
in one line instead of being loaded -- a bit-flipped checkpoint once trained 20 epochs of NaN.
Files written before this format (no header) still load, unverified.

:func:`save_rotating` keeps the previous file beside the new one (``<name>.prev``) and
:func:`load_newest_good` falls back to it when the newest is corrupt, so a damaged checkpoint costs
at most one checkpoint interval. Both reading and writing hold the whole payload in memory once.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from scalable_xmr.errors import CorruptFileError
from scalable_xmr.io import atomic_path
from scalable_xmr.store import remote

MAGIC = b"XMRTORCH1"
_DIGEST = 32


def save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` with a checksum header, atomically."""
    import torch  # here, not at import: reading run.json (RunStore) must not load torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).digest())
            f.write(payload)


def load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """The object :func:`save` wrote, after its checksum matched; CorruptFileError names the file."""
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(MAGIC):
        head = len(MAGIC)
        digest, payload = raw[head : head + _DIGEST], memoryview(raw)[head + _DIGEST :]
        if hashlib.sha256(payload).digest() != digest:
            raise CorruptFileError(f"{path}: checksum mismatch ({len(raw)} bytes): the file is corrupt "
                                   "(truncated or overwritten)")
        source: Any = io.BytesIO(payload)
    else:
        source = io.BytesIO(raw)  # written before checksums: loaded unverified
    try:
        import torch

        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable payload is one named, corrupt file
        raise CorruptFileError(f"{path}: cannot be read ({type(e).__name__}): corrupt or not a "
                               "scalable_xmr file") from None


def previous(path: str | os.PathLike) -> Path:
    return Path(f"{path}.prev")


def save_rotating(obj: Any, path: str | os.PathLike) -> None:
    """:func:`save`, keeping the file it replaces as ``<path>.prev``."""
    if Path(path).is_file():
        os.replace(path, previous(path))
        # An object-storage run keeps the previous checkpoint too: copied in the bucket, not uploaded
        # again (the save below then overwrites ``path``'s object).
        remote.renamed(path, previous(path))
    save(obj, path)


def load_newest_good(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[Any, Path, str | None]:
    """(object, the file it came from, why the newest was skipped or None): ``path``, or its
    ``.prev`` when ``path`` is corrupt or missing. Raises the newest file's error when neither
    loads."""
    path = Path(path)
    try:
        return load(path, map_location), path, None
    except (CorruptFileError, FileNotFoundError) as newest:
        older = previous(path)
        if not older.is_file():
            raise
        try:
            return load(older, map_location), older, str(newest)
        except CorruptFileError:
            raise newest from None


def payload_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a model file's payload: the checksum its header carries (a file written before
    checksums: the whole file hashed). Reads 41 bytes, not the payload."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 32)
        if head.startswith(MAGIC):
            return head[len(MAGIC):].hex()
        f.seek(0)
        return hashlib.file_digest(f, "sha256").hexdigest()
