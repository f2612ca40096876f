"""What ``xmr index``, ``xmr search`` and ``xmr serve`` check before torch or Ray is loaded.

A user's mistake -- a run that is not finished, a modality or model it lacks, an index of another
run, a port in use, an ``--out`` that cannot be written -- is one line naming their own path or
value, exit 2, in about a second: only run.json, index sidecars and model-file headers are read
here (no torch, no Ray; ``tests/serving/test_preflight.py`` holds the import list to that).

:func:`open_run` is the run as these checks see it (:class:`RunInfo`); :func:`check_index` is the
one reader of index sidecars, used here and by ``serving.index`` when it reads an index's rows.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import read_json
from scalable_xmr.store import torchfile
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore

SIDECAR = "_xmr_index.json"
FORMAT = "scalable_xmr.index/1"
PAIR_MODALITIES = ("image", "text")
# How each branch model ranks a gallery (serving.branch): a dot product of stored embeddings,
# MMCA's re-scoring with the cross-attention term, MTFN's fusion of every pair.
MODES = {"vse": "embedding", "vsa": "embedding", "mmca": "rerank", "mtfn": "pairwise"}


@dataclass(frozen=True)
class RunInfo:
    """A finished run as read from its run.json (and its member's model-file header)."""

    uri: str
    store: RunStore
    meta: RunMeta
    model: str | None  # a branch run's member ("vse", "mtfn-seed1"); None for SDML
    model_kind: str | None  # that member's model: vse | vsa | mmca | mtfn
    modalities: list[str]
    fingerprint: str  # SDML: P's sha256; a member: its model.pt payload's sha256

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def mode(self) -> str:
        """``sdml``, or the member's search mode (``MODES``)."""
        return "sdml" if self.kind == "sdml" else MODES.get(self.model_kind or "", "embedding")

    def check_modality(self, modality: object, field: str = "modality") -> str:
        if modality not in self.modalities:
            raise InputError(f"{field}: unknown modality {modality!r} (run {self.uri} has: "
                             f"{', '.join(self.modalities)})")
        return str(modality)


def choose_member(members: list[str], model: str | None, root: Any) -> str:
    """The member of a branch run that ``model`` names (the only one when None)."""
    if not members:
        raise InputError(f"{root}: the run has no finished model")
    if model is None:
        if len(members) > 1:
            raise InputError(f"model: the run {root} has {len(members)} models ({', '.join(members)}); "
                             "choose one")
        return members[0]
    if model not in members:
        raise InputError(f"model: unknown model {model!r} (run {root} has: {', '.join(members)})")
    return model


def open_run(uri: str | os.PathLike, model: str | None = None) -> RunInfo:
    """The finished run at ``uri`` (RunStateError when it is not finished), without torch."""
    store = RunStore(os.fspath(uri))
    meta = store.read_finished()
    if meta.kind == "sdml":
        if model is not None:
            raise InputError(f"model: an SDML run has one network per modality; got {model!r}")
        return RunInfo(os.fspath(uri), store, meta, None, None, meta.finished_modalities(),
                       str(meta.projection["sha256"]))
    members = {m: v for m, v in (meta.members or {}).items() if v.get("status") == "finished"}
    name = choose_member(list(members), model, store.root)
    path = store.member_dir(name) / "model.pt"
    if not path.is_file():
        raise MissingError(f"{path}: the model file of member {name!r} is missing")
    kind = str(members[name].get("model") or name.split("-")[0])
    return RunInfo(os.fspath(uri), store, meta, name, kind, list(PAIR_MODALITIES),
                   torchfile.payload_sha256(path))


def check_index(path: str, run: Any, target_modality: str | None = None,
                field: str = "--index") -> tuple[dict[str, Any], list[str]]:
    """(sidecar, Parquet files) of an index directory, after checking it was built by ``run`` (a
    :class:`RunInfo` or a ``TrainedRun``: its ``kind`` and ``fingerprint``) -- without reading rows.

    Refused with one line naming ``field`` and the path: no sidecar, another run's fingerprint
    (P sha256 / model sha256), or another modality than ``target_modality``.
    """
    root = Path(path)
    side = root / SIDECAR
    if not side.is_file():
        raise MissingError(f"{field} {path}: not an index (no {SIDECAR}; build one with `xmr index`)")
    meta = read_json(side)
    if meta.get("format") != FORMAT:
        raise InputError(f"{field} {path}: unknown index format {meta.get('format')!r}")
    if meta.get("fingerprint") != run.fingerprint:
        what = "P sha256" if run.kind == "sdml" else "model sha256"
        raise InputError(f"{field} {path}: built by another run ({what} {str(meta.get('fingerprint'))[:12]}, "
                         f"run {meta.get('run')}); this run's is {run.fingerprint[:12]}")
    if target_modality is not None and meta.get("modality") != target_modality:
        raise InputError(f"{field} {path}: holds {meta.get('modality')!r} items, the target is "
                         f"{target_modality!r}")
    files = sorted(str(p) for p in root.glob("*.parquet"))
    if not files:
        raise InputError(f"{field} {path}: no Parquet files")
    return meta, files


def check_port(host: str, port: int) -> None:
    """``--port`` is free on ``--host``: bound and released here, before Ray starts."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"--port: must be from 1 to 65535, got {port}")
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise InputError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e})") from None


def check_out_dir(out: str, field: str = "--out") -> None:
    """``out`` is a directory that can be created and written, and is empty (nothing is left)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"{field} {out}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"{field} {out}: exists and is not empty; choose another path")
    parent = path if path.is_dir() else next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{field} {out}: cannot be written ({parent} is not a writable directory)")
    try:  # permissions are not the whole story (a read-only mount): try a file
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise InputError(f"{field} {out}: cannot be written ({e.strerror or e})") from None


def check_out_file(out: str, field: str = "--out") -> None:
    """``out`` can be written as a file (its directory exists or can be made, and is writable)."""
    path = Path(out)
    if path.is_dir():
        raise InputError(f"{field} {out}: is a directory; give a file path")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise InputError(f"{field} {out}: cannot be written ({parent}: {e.strerror or e})") from None


def check_serve(run_uri: str, indexes: dict[str, str], modalities: list[str] | None, ann: str,
                model: str | None, host: str, port: int | None) -> RunInfo:
    """Everything ``xmr serve`` can check before Ray (the port too, unless None); returns the run."""
    if port is not None:
        check_port(host, port)
    run = open_run(run_uri, model)
    mods = [run.check_modality(m, "--modality") for m in (modalities or run.modalities)]
    if ann != "exact" and run.mode not in ("sdml", "embedding"):
        raise InputError(f"--ann {ann}: a {run.model_kind} run scores pairs (no per-item embedding for "
                         "faiss); use --ann exact")
    for m, path in indexes.items():
        if m not in mods:
            raise InputError(f"--index {m}={path}: modality {m!r} is not served (serving: {', '.join(mods)})")
        check_index(path, run, m)
    return run
