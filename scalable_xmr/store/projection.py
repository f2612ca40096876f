"""The fixed projection P that defines SDML's common space (docs/run-store.md, SDML §3.1).

SDML Eq. (1) maps a common representation h (d-dim) into label space with Pᵀh; P is a fixed d×c
matrix with orthonormal columns so that the one-dimensional subspaces of the c categories are
orthogonal (paper §3.1, "we set the matrix P as an orthogonal matrix with orthonormal columns").
Because P never changes, every modality network can be trained alone against it.

Storage: an Arrow IPC file with one ``fixed_size_list<float32>[c]`` column of d rows (row-major P)
and schema metadata ``dim, n_classes, seed, method, sha256`` (sha256 of the raw float32 bytes).
Loading memory-maps the file and refuses it if the checksum, the shape or orthonormality fails.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import atomic_path

METHOD = "qr-gaussian-signfixed"
ORTHONORMAL_TOL = 1e-5


def create_projection(dim: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """First ``n_classes`` columns of a ``dim×dim`` orthogonal matrix (QR of a seeded Gaussian).

    The QR factor's signs are fixed (diag(R) > 0) so that the same seed always gives the same P.

    Example:
        >>> P = create_projection(8, 3, seed=0)
        >>> P.shape, P.dtype
        ((8, 3), dtype('float32'))
        >>> bool(np.abs(P.T @ P - np.eye(3)).max() < 1e-5)
        True
    """
    if not isinstance(dim, int) or dim < 1:
        raise InputError(f"projection dim must be a positive integer, got {dim!r}")
    if not isinstance(n_classes, int) or n_classes < 1:
        raise InputError(f"projection n_classes must be a positive integer, got {n_classes!r}")
    if n_classes > dim:
        raise InputError(
            f"n_classes ({n_classes}) > dim ({dim}): P cannot have more orthonormal columns than rows"
        )
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((dim, dim))  # float64 for an accurate QR
    q, r = np.linalg.qr(gaussian)
    q = q * np.sign(np.diag(r))[None, :]  # sign fix: makes the factorisation unique
    return np.ascontiguousarray(q[:, :n_classes], dtype=np.float32)


def projection_sha256(P: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(P, dtype=np.float32).tobytes()).hexdigest()


def save_projection(path: str | os.PathLike, P: np.ndarray, seed: int | None = None) -> str:
    """Write P atomically as an Arrow IPC file; returns its sha256."""
    P = np.ascontiguousarray(P, dtype=np.float32)
    if P.ndim != 2:
        raise InputError(f"projection must be a 2-D matrix, got shape {P.shape}")
    dim, n_classes = P.shape
    _check_orthonormal(P, str(path))
    digest = projection_sha256(P)
    column = pa.FixedSizeListArray.from_arrays(pa.array(P.reshape(-1)), n_classes)
    metadata = {
        "dim": str(dim),
        "n_classes": str(n_classes),
        "seed": "" if seed is None else str(seed),
        "method": METHOD,
        "sha256": digest,
    }
    table = pa.table({"P": column}).replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return digest


def read_projection_metadata(path: str | os.PathLike) -> dict[str, str]:
    with _open_ipc(path) as (reader, _):
        return {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}


def load_projection(
    path: str | os.PathLike,
    expected_sha256: str | None = None,
    expected_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Memory-map P and verify checksum, shape and orthonormality; return a (d, c) float32 array."""
    where = str(path)
    with _open_ipc(path) as (reader, _):
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        for key in ("dim", "n_classes", "sha256"):
            if key not in meta:
                raise InputError(f"{where}: projection metadata lacks '{key}'")
        table = reader.read_all()
    if table.num_columns != 1 or not pa.types.is_fixed_size_list(table.schema.field(0).type):
        raise InputError(f"{where}: expected one fixed_size_list<float32> column, got {table.schema}")
    col = table.column(0).combine_chunks()
    dim, n_classes = int(meta["dim"]), int(meta["n_classes"])
    shape = (len(col), col.type.list_size)
    if shape != (dim, n_classes):
        raise InputError(f"{where}: shape check failed: table is {shape}, metadata says {(dim, n_classes)}")
    if expected_shape is not None and shape != tuple(expected_shape):
        raise InputError(f"{where}: shape check failed: P is {shape}, expected {tuple(expected_shape)}")
    P = col.values.to_numpy(zero_copy_only=True).reshape(shape)
    digest = projection_sha256(P)
    if digest != meta["sha256"]:
        raise InputError(
            f"{where}: checksum check failed: data sha256 {digest[:12]}… != metadata "
            f"{meta['sha256'][:12]}… (the file was modified)"
        )
    if expected_sha256 is not None and digest != expected_sha256:
        raise InputError(
            f"{where}: checksum check failed: sha256 {digest[:12]}… != expected "
            f"{expected_sha256[:12]}… (not the projection this run was trained with)"
        )
    _check_orthonormal(P, where)
    return P


def describe_projection(path: str | os.PathLike) -> str:
    P = load_projection(path)
    meta = read_projection_metadata(path)
    err = float(np.abs(P.T.astype(np.float64) @ P - np.eye(P.shape[1])).max())
    rows = [
        ("file", str(Path(path).resolve())),
        ("shape (dim x n_classes)", f"{P.shape[0]} x {P.shape[1]}"),
        ("seed", meta.get("seed", "")),
        ("method", meta.get("method", "")),
        ("sha256", meta["sha256"]),
        ("max |PᵀP − I|", f"{err:.2e}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _check_orthonormal(P: np.ndarray, where: str) -> None:
    if not np.isfinite(P).all():
        raise InputError(f"{where}: orthonormality check failed: P holds NaN or inf")
    gram = P.T.astype(np.float64) @ P.astype(np.float64)
    err = float(np.abs(gram - np.eye(P.shape[1])).max())
    if err >= ORTHONORMAL_TOL:
        raise InputError(
            f"{where}: orthonormality check failed: max |PᵀP − I| = {err:.2e} >= {ORTHONORMAL_TOL}"
        )


class _open_ipc:
    """Memory-map an Arrow IPC file with a clear error for a missing or unreadable file."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)

    def __enter__(self):
        if not os.path.isfile(self.path):
            raise MissingError(f"{self.path}: projection file not found")
        try:
            self.source = pa.memory_map(self.path, "r")
            reader = pa.ipc.open_file(self.source)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{self.path}: not a readable Arrow IPC projection file ({e})") from e
        return reader, self.source

    def __exit__(self, *exc):
        # The arrays returned keep the mapping alive through their buffers; closing our handle
        # only drops this reference.
        return False
