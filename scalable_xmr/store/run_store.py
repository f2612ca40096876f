"""The run store (docs/run-store.md): a directory a later job can read and extend.

```
<run>/run.json                      dataset, modalities, classes, seed, configs, versions, status
<run>/projection.arrow              P (written once, never rewritten)
<run>/modalities/<m>/model.pt       best state_dict + config (torch.load(weights_only=True))
<run>/modalities/<m>/checkpoints/   resumable training state
<run>/modalities/<m>/embeddings/<split>.parquet   id, labels, embedding
<run>/modalities/<m>/train_log.json history, best epoch, restarts
<run>/metrics.json                  mAP per ordered pair and mean
<run>/plots/                        mAP heatmap, precision-recall and precision-scope curves
<run>/models/<member>/              a branch-model run's member: model.pt, checkpoints/, sims/
```

Every write is atomic (temp file, then rename). ``run.json`` carries ``status``: ``running`` while a
job works on the run, ``finished`` once every artifact is in place; a job that dies leaves
``running`` (or ``failed``) behind, so no reader mistakes a half-made run for a complete one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_xmr.errors import InputError, MissingError, RunStateError
from scalable_xmr.io import atomic_path, atomic_write_json, fileops, read_json
from scalable_xmr.store import remote, torchfile
from scalable_xmr.store.lock import LOCK_NAME
from scalable_xmr.store.meta import RunMeta, now_iso
from scalable_xmr.uris import is_remote, local_path

FORMAT_VERSION = 1


class RunStore:
    """Paths and atomic reads/writes of one run directory.

    ``root`` is a local path or an object-storage URI (``s3://bucket/runs/x``); a URI's run is
    read and written in its local mirror (store/remote.py), ``root`` then being the mirror and
    ``uri`` the URI (what jobs hand to actors and trials, which may run on other nodes). With
    ``modality`` (an actor or trial training that one modality) a URI's mirror gets the run's
    top-level files and that modality's directory only. With ``pull=False`` nothing is downloaded
    yet: a job that calls :meth:`refresh` once it holds the run's lock pulls the run once, not
    twice."""

    def __init__(self, root: str | os.PathLike, modality: str | None = None, pull: bool = True):
        self._mirror = remote.mirror(os.fspath(root)) if is_remote(root) else None
        if self._mirror is not None:
            if pull:
                remote.pull(self._mirror, subdirs=None if modality is None else (f"modalities/{modality}",))
            self.root = self._mirror.local
            self.uri = self._mirror.uri
        else:
            self.root = local_path(root).resolve()
            self.uri = remote.uri_of(self.root)  # a mirror path given as such stands for its URI

    def refresh(self) -> None:
        """Bring the local mirror of an object-storage run in line with the bucket (new objects
        downloaded, files the bucket lacks removed): a job calls it once it holds the run's lock,
        and after its actors (on any node) have uploaded their results. Nothing for a local run."""
        if self._mirror is not None:
            remote.pull(self._mirror, prune=True)

    # ---- paths ---------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def projection_path(self) -> Path:
        return self.root / "projection.arrow"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def modality_dir(self, modality: str) -> Path:
        return self.root / "modalities" / modality

    def model_path(self, modality: str) -> Path:
        return self.modality_dir(modality) / "model.pt"

    def checkpoint_path(self, modality: str) -> Path:
        return self.modality_dir(modality) / "checkpoints" / "last.pt"

    def embeddings_path(self, modality: str, split: str) -> Path:
        return self.modality_dir(modality) / "embeddings" / f"{split}.parquet"

    def train_log_path(self, modality: str) -> Path:
        return self.modality_dir(modality) / "train_log.json"

    def member_dir(self, name: str) -> Path:
        """A branch-model run's member (or ensemble) directory: model.pt, checkpoints/, sims/."""
        return self.root / "models" / name

    # ---- run.json ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.run_json.is_file()

    def read(self) -> RunMeta:
        if not self.root.is_dir():
            raise MissingError(f"{self.uri}: run directory not found")
        if not self.run_json.is_file():
            raise RunStateError(f"{self.uri}: not a run directory (no run.json)")
        return RunMeta.from_json(read_json(self.run_json), str(self.run_json))

    def write(self, meta: RunMeta) -> None:
        """run.json, atomically, stamped ``updated`` now."""
        meta.updated = now_iso()
        atomic_write_json(self.run_json, meta.to_json())

    def read_finished(self) -> RunMeta:
        meta = self.read()
        if meta.status != "finished":
            raise RunStateError(
                f"{self.uri}: not a finished run (status {meta.status!r}); "
                "finish it with `xmr train --run ... --resume` first"
            )
        return meta

    def _entries(self) -> list[Path]:
        """What the directory holds, the job lock (store/lock.py) left out."""
        return [p for p in self.root.iterdir() if p.name != LOCK_NAME]

    def _clear(self) -> None:
        """Delete the run's contents for --overwrite; the lock the job holds stays."""
        for p in self._entries():
            fileops.remove(p, missing_ok=False)  # an object-storage run: deleted in the bucket too

    def plan(self, overwrite: bool, resume: bool) -> str:
        """What a training job will do with ``root``, decided without changing anything (jobs call
        it before Ray starts): 'new', 'resume', or 'replace' (--overwrite of something there)."""
        return self.survey(overwrite, resume)[0]

    def survey(self, overwrite: bool, resume: bool) -> tuple[str, RunMeta | None]:
        """:meth:`plan`'s decision and the run.json it read (None when there is none): a job reads
        a stored run once."""
        if not self.root.exists() or (self.root.is_dir() and not self._entries()):
            if resume:
                raise RunStateError(f"{self.uri}: --resume given but there is no run to resume")
            return "new", None
        if not self.root.is_dir():
            raise InputError(f"{self.uri}: exists and is not a directory")
        if not self.run_json.is_file():
            if overwrite:
                return "replace", None
            raise RunStateError(
                f"{self.uri}: exists, is not empty and holds no run.json; choose another --run "
                "or pass --overwrite to delete it"
            )
        meta = self.read()
        if resume:
            return "resume", meta
        if overwrite:
            return "replace", meta
        raise RunStateError(
            f"{self.uri}: already holds a {meta.status} run; pass --resume to "
            "continue it or --overwrite to replace it"
        )

    def prepare(self, mode: str) -> str:
        """Carry out :meth:`plan`'s decision: 'replace' empties the directory (the job's lock
        stays) and becomes 'new'."""
        if mode == "replace":
            self._clear()
            return "new"
        return mode

    def prepare_new(self, overwrite: bool, resume: bool) -> str:
        """:meth:`plan` then :meth:`prepare`; returns 'new' or 'resume'."""
        return self.prepare(self.plan(overwrite, resume))

    # ---- models --------------------------------------------------------------------------------
    def save_model(self, modality: str, payload: dict[str, Any]) -> None:
        torchfile.save(payload, self.model_path(modality))

    def load_model(self, modality: str) -> dict[str, Any]:
        path = self.model_path(modality)
        if not path.is_file():
            raise MissingError(f"{path}: model file not found")
        return torchfile.load(path)

    # ---- embeddings ----------------------------------------------------------------------------
    def write_embeddings(
        self, modality: str, split: str, ids: np.ndarray, labels: np.ndarray, emb: np.ndarray
    ) -> None:
        """Atomic Parquet: ``id``, ``labels`` (list<int32> of class indices), ``embedding``."""
        with atomic_path(self.embeddings_path(modality, split)) as tmp:
            pq.write_table(_embedding_table(ids, labels, emb), tmp)

    def write_embeddings_parts(
        self, modality: str, split: str, dim: int, parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> None:
        """:meth:`write_embeddings` of ``parts`` (ids, multi-hot labels, (n, ``dim``) embeddings)
        written as they come: memory holds one part, not the split (a streamed trainer's splits)."""
        schema = _embedding_table(np.empty(0, object), np.zeros((0, 0)), np.zeros((0, dim))).schema
        with atomic_path(self.embeddings_path(modality, split)) as tmp, pq.ParquetWriter(tmp, schema) as w:
            for ids, labels, emb in parts:
                w.write_table(_embedding_table(ids, labels, emb))

    def read_embeddings(
        self, modality: str, split: str, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (n,), multi-hot labels (n, c) float32, embeddings (n, d) float32)."""
        path = self.embeddings_path(modality, split)
        if not path.is_file():
            raise MissingError(f"{path}: embeddings not found")
        table = pq.read_table(path)
        emb_col = table.column("embedding").combine_chunks()
        emb = emb_col.values.to_numpy().reshape(len(emb_col), emb_col.type.list_size)
        labels = np.zeros((table.num_rows, n_classes), np.float32)
        for i, row in enumerate(table.column("labels").to_pylist()):
            labels[i, row] = 1.0
        return np.asarray(table.column("id").to_pylist(), dtype=object), labels, emb

    # ---- metrics -------------------------------------------------------------------------------


def _embedding_table(ids: np.ndarray, labels: np.ndarray, emb: np.ndarray) -> pa.Table:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    label_lists = [np.flatnonzero(row).astype(np.int32) for row in labels]
    return pa.table(
        {
            "id": pa.array([str(i) for i in ids], pa.string()),
            "labels": pa.array(label_lists, pa.list_(pa.int32())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
        }
    )
