"""Runs on object storage (``s3://bucket/runs/x``): a local mirror kept in step with the bucket.

Every writer of the package writes local files atomically (``io.atomic_path``: temporary, then
rename). A run whose directory is a URI is worked on in a local mirror,
``$XMR_CACHE/runs/<scheme>/<bucket>/<key>`` (default ``~/.cache/scalable_xmr/runs/...``), and this
module keeps the two in step:

- opening a run downloads what the bucket holds and the mirror lacks or holds older (:func:`pull`),
  but for a data-parallel modality's Ray Train run, which lives in the bucket only;
- every file renamed into place under a mirror is uploaded at once, with one PUT, which S3 makes
  atomic (there is no rename on S3, so the object appears whole or not at all); a directory is
  uploaded file by file and objects under it that the mirror no longer has are deleted; a path
  removed from the mirror is deleted from the bucket (``io.after_write`` calls :func:`push`); a
  file renamed within a mirror whose bytes the bucket already holds is copied there server side
  (:func:`renamed`), not uploaded again;
- the writers write ``run.json`` (the finished marker) after the files it describes, so in the
  bucket too it is uploaded last.

The mapping from mirror path to object key is fixed (no registry to share), so Ray actors and Tune
trials on other nodes that open the same URI write to the same keys. An uploaded file's local
mtime is set to the object's, and a pull only fetches objects newer than the local copy, so a pull
never replaces a file this machine wrote and is uploading.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from scalable_xmr import io
from scalable_xmr.errors import InputError
from scalable_xmr.uris import is_remote, local_path, scheme, split_uri

CACHE_ENV = "XMR_CACHE"
_SKIP = (".lock",)  # the job lock lives on the mirror only (store/lock.py)
# Never pulled: a data-parallel modality's Ray Train run (store/training_state.py RAY_TRAIN_DIR), which
# Ray Train reads and writes in the bucket itself (sdml/data_parallel.py); a mirror has no use for it.
_BUCKET_ONLY = "/checkpoints/ray-train/"


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "scalable_xmr")
    return Path(base).expanduser().resolve() / "runs"


@dataclass(frozen=True)
class Mirror:
    """One run URI and its local mirror directory."""

    uri: str  # scheme://bucket/key, no trailing slash
    local: Path
    fs: Any  # pyarrow.fs.FileSystem
    remote: str  # bucket/key: the path on ``fs``

    def key_of(self, path: Path) -> str:
        rel = path.relative_to(self.local).as_posix()
        return self.remote if rel == "." else f"{self.remote}/{rel}"


def mirror(uri: str, what: str = "--run") -> Mirror:
    """The mirror of ``uri`` (credentials and bucket checked: one line naming the URI)."""
    uri = os.fspath(uri).rstrip("/")
    kind, rest = split_uri(uri)
    if "/" not in rest or "?" in rest:
        raise InputError(f"{what} {uri}: give a key under the bucket, without options "
                         f"(e.g. {kind}://{rest.split('/')[0].split('?')[0]}/runs/x)")
    fs, remote = io.open_uri(uri, what)
    return Mirror(uri, cache_root() / kind / rest, fs, remote)


def _mirror_of_path(path: Path) -> Mirror | None:
    """The mirror a local path lies in, from its place under :func:`cache_root` (None: not one)."""
    try:
        rel = path.resolve().relative_to(cache_root())
    except ValueError:
        return None
    if len(rel.parts) < 3:  # scheme/bucket/ at least one key part
        return None
    scheme, bucket = rel.parts[0], rel.parts[1]
    return mirror(f"{scheme}://{bucket}/{rel.parts[2]}")


def open_dir(target: str | os.PathLike, what: str = "--run") -> Path:
    """The local directory of a run: the path itself, or the pulled mirror of a URI."""
    if not is_remote(target):
        return local_path(target).resolve()
    m = mirror(os.fspath(target), what)
    pull(m)
    return m.local


def uri_of(path: str | os.PathLike) -> str:
    """The URI a mirror path stands for (a local path stays itself): what actors and trials on other
    nodes are given."""
    p = Path(path)
    m = _mirror_of_path(p)
    if m is None:
        return str(p)
    return f"{scheme(m.uri)}://{m.key_of(p.resolve())}"


def _remote_files(m: Mirror) -> dict[str, pafs.FileInfo]:
    if m.fs.get_file_info(m.remote).type == pafs.FileType.NotFound:
        return {}
    infos = m.fs.get_file_info(pafs.FileSelector(m.remote, recursive=True))
    base = len(m.remote) + 1
    return {i.path[base:]: i for i in infos if i.type == pafs.FileType.File}


def _skipped(rel: str) -> bool:
    parts = rel.split("/")
    return parts[-1] in _SKIP or any(p.endswith(".tmp") and p.startswith(".") for p in parts)


def _wanted(rel: str, subdirs: tuple[str, ...] | None) -> bool:
    """With ``subdirs``: a file at the top of the run, or under one of those directories."""
    return subdirs is None or "/" not in rel or any(rel.startswith(f"{d}/") for d in subdirs)


def pull(m: Mirror, prune: bool = False, subdirs: tuple[str, ...] | None = None) -> int:
    """Download every object newer than its local copy (or missing locally); with ``prune`` also
    delete local files the bucket does not hold (the job lock and temporaries excepted). With
    ``subdirs`` (paths relative to the run) only the run's top-level files and what lies under
    those directories are downloaded: an actor training one modality fetches P, run.json and its
    own modality's checkpoints, not every other modality's files. Returns the number of files
    downloaded."""
    if prune and subdirs is not None:
        raise ValueError("pull: prune needs the whole run (subdirs=None)")
    remote = _remote_files(m)
    n = 0
    for rel, info in remote.items():
        if _skipped(rel) or not _wanted(rel, subdirs) or _BUCKET_ONLY in f"/{rel}":
            continue
        target = m.local / rel
        mtime = info.mtime.timestamp() if info.mtime else 0.0
        if target.is_file() and os.stat(target).st_mtime >= mtime - 1e-3:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".dl", dir=target.parent)
        os.close(fd)
        try:
            pafs.copy_files(info.path, tmp, source_filesystem=m.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            os.utime(tmp, (mtime, mtime))
            os.replace(tmp, target)  # not io.atomic_path: a download is not uploaded again
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        n += 1
    if prune and m.local.is_dir():
        for p in sorted(m.local.rglob("*"), reverse=True):
            rel = p.relative_to(m.local).as_posix()
            if p.is_file() and rel not in remote and not _skipped(rel):
                p.unlink()
            elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
                p.rmdir()
    return n


def _upload(m: Mirror, path: Path) -> None:
    key = m.key_of(path)
    with open(path, "rb") as src, m.fs.open_output_stream(key) as dst:  # one PUT for small files
        shutil.copyfileobj(src, dst, 1 << 20)
    info = m.fs.get_file_info(key)
    if info.mtime is not None:  # a later pull compares against the object's own time
        stamp = info.mtime.timestamp()
        os.utime(path, (stamp, stamp))


def renamed(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Tell the bucket that the file ``src`` was just renamed to ``dst`` (both under one mirror):
    ``src``'s object is copied to ``dst``'s key server side, with no upload (``src``'s object is left
    for the caller, which rewrites or removes it). Paths outside a mirror: nothing. A file whose
    ``src`` object is missing (never uploaded) is uploaded instead."""
    d = Path(dst).resolve()
    m = _mirror_of_path(d)
    if m is None:
        return
    s = Path(src).resolve()
    rel = d.relative_to(m.local).as_posix()
    if _skipped(rel):
        return
    try:
        s.relative_to(m.local)
    except ValueError:
        push(d)
        return
    src_key, dst_key = m.key_of(s), m.key_of(d)
    if m.fs.get_file_info(src_key).type != pafs.FileType.File:
        push(d)
        return
    m.fs.copy_file(src_key, dst_key)
    info = m.fs.get_file_info(dst_key)
    if info.mtime is not None and d.is_file():  # as after an upload: a pull compares object times
        stamp = info.mtime.timestamp()
        os.utime(d, (stamp, stamp))


def push(path: Path) -> None:
    """Make the bucket's copy of ``path`` (under a mirror) match the local one: upload a file,
    upload a directory's files and delete objects under it the mirror no longer has, delete the
    objects of a path that is gone. Paths outside every mirror are left alone."""
    m = _mirror_of_path(path)
    if m is None:
        return
    path = path.resolve()
    rel = path.relative_to(m.local).as_posix()
    if _skipped(rel):
        return
    key = m.key_of(path)
    if path.is_file():
        _upload(m, path)
        return
    info = m.fs.get_file_info(key)
    if not path.exists():
        if info.type == pafs.FileType.File:
            m.fs.delete_file(key)
        elif info.type == pafs.FileType.Directory:
            m.fs.delete_dir(key)
        return
    local = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
    for sub, p in sorted(local.items()):
        if not _skipped(sub):
            _upload(m, p)
    if info.type == pafs.FileType.Directory:
        for i in m.fs.get_file_info(pafs.FileSelector(key, recursive=True)):
            if i.type == pafs.FileType.File and i.path[len(key) + 1:] not in local:
                m.fs.delete_file(i.path)


def pull_path(path: str | os.PathLike) -> None:
    """Pull the part of a mirror at ``path`` (a directory under a mirror; nothing for other paths):
    what Ray actors or Tune trials on other nodes uploaded there."""
    p = Path(path).resolve()
    m = _mirror_of_path(p)
    if m is not None:
        pull(mirror(f"{scheme(m.uri)}://{m.key_of(p)}"))


if push not in io.after_write:
    io.after_write.append(push)
