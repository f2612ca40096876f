"""Index tables: a collection encoded by a run, for search (``xmr index``).

An index is a directory of Parquet files with columns ``id: string``, ``embedding:
fixed_size_list<float32>[d]`` (and ``labels: list<int32>`` when the source table had them), plus a
sidecar ``_xmr_index.json`` (ignored by Parquet readers: leading underscore) that records the run,
the modality, the model and the run's fingerprint -- P's sha256 for an SDML run (the common space
the embeddings live in), the model file's sha256 for a branch-model run. A search refuses an index
whose fingerprint differs from its run's: its embeddings are in another space. Every model kind can
be indexed: ``embedding`` holds the L2-normalised embedding (SDML, VSE, VSA), MTFN's ṽ / t̃ (scored
by its fusion), or MMCA's i0 / c0, which MMCA indexes complete with the cross-attention input of
each item (``regions``: an image's k x d region features; ``words``: a caption's word features).

:func:`build_index` streams the source table through Ray Data: ``read_parquet`` -> ``map_batches``
with :class:`BatchEncoder` (a callable class, so each replica loads the run once) -> ``write_parquet``.
Replicas: one per GPU when the cluster has GPUs, else one per CPU slot but one (the reader and the
writer need a slot); a million-row table never has to fit in memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import atomic_write_json
from scalable_xmr.serving.preflight import FORMAT, SIDECAR, check_index, check_out_dir
from scalable_xmr.serving.run import Gallery, TrainedRun, load_run
from scalable_xmr.store.meta import now_iso


# ---- reading source tables -------------------------------------------------------------------------
def features_of(table: pa.Table, column: str, where: str) -> Any:
    """The feature column of a batch as a (n, dim) float32 array (or token lists for ``tokens``)."""
    if column not in table.column_names:
        raise InputError(f"{where}: no column {column!r} (columns: {', '.join(table.column_names)})")
    col = table.column(column).combine_chunks()
    if column == "tokens":
        return [np.asarray(r, dtype=np.int64) for r in col.to_pylist()]
    if pa.types.is_fixed_size_list(col.type) and col.null_count == 0:
        values = col.values.to_numpy(zero_copy_only=False)
        return values.reshape(len(col), col.type.list_size).astype(np.float32)
    try:
        return np.asarray(col.to_pylist(), dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: column {column!r} must hold equal-length float vectors ({e})") from None


def feature_column(run: TrainedRun, modality: str) -> str:
    """The source column a modality's network reads: ``tokens`` (token captions) or ``features``."""
    if run.kind != "sdml" and modality == "text" and run.engine.text_dim is None:
        return "tokens"
    return "features"


def labels_matrix(table: pa.Table, n_classes: int) -> np.ndarray | None:
    """Multi-hot labels of a ``labels: list<int>`` column, None without the column."""
    if "labels" not in table.column_names or n_classes < 1:
        return None
    out = np.zeros((table.num_rows, n_classes), np.float32)
    for i, row in enumerate(table.column("labels").to_pylist()):
        bad = [c for c in (row or []) if not 0 <= c < n_classes]
        if bad:
            raise InputError(f"labels: row {i} has class {bad[0]!r}, the run has classes 0..{n_classes - 1}")
        out[i, row or []] = 1.0
    return out


def read_table(path: str, where: str) -> pa.Table:
    if not Path(path).exists():
        raise MissingError(f"{path}: {where} not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: {where} is not a readable Parquet table ({e})") from None


# ---- the Ray Data encoder --------------------------------------------------------------------------
class BatchEncoder:
    """``map_batches`` callable: (id, features[, labels]) Arrow batch -> (id, embedding[, labels])."""

    def __init__(self, run_uri: str, modality: str, model: str | None, device: str, where: str):
        self.run = load_run(run_uri, model=model, device=device)
        self.modality, self.where = modality, where
        self.column = feature_column(self.run, modality)

    def __call__(self, batch: pa.Table) -> pa.Table:
        features = features_of(batch, self.column, self.where)
        out = {"id": batch.column("id").cast(pa.string())}
        if self.run.kind != "sdml" and self.run.engine.mode == "rerank":
            reprs = self.run.engine.represent(self.modality, features)  # MMCA: (i0, R) / (c0, E, valid)
            emb = self.run.engine.embedding(reprs)
            out.update(mmca_columns(self.modality, reprs))
        else:
            emb = self.run.encode(self.modality, features)  # (B, d)
        out["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        if "labels" in batch.column_names:
            out["labels"] = batch.column("labels").cast(pa.list_(pa.int32()))
        return pa.table(out)


def mmca_columns(modality: str, reprs: tuple) -> dict[str, pa.Array]:
    """An MMCA item's cross-attention input beside its i0 / c0: ``regions`` (an image's R, k x d
    flattened) or ``words`` (a caption's E at its valid positions, n x d flattened; padding dropped,
    which changes nothing: padded words are masked out of every attention and pool)."""
    if modality == "image":
        regions = reprs[1].float().cpu().numpy()  # (B, k, d)
        return {"regions": pa.FixedSizeListArray.from_arrays(pa.array(regions.reshape(-1)),
                                                             regions.shape[1] * regions.shape[2])}
    _, words, valid = (t.cpu() for t in reprs)  # (B, T, d), (B, T)
    rows = [words[i][valid[i]].float().numpy().reshape(-1) for i in range(len(words))]
    return {"words": pa.array(rows, pa.list_(pa.float32()))}


def mmca_reprs(modality: str, table: pa.Table, emb: np.ndarray, dim: int) -> tuple:
    """The MMCA representation of index rows (:func:`mmca_columns` read back)."""
    import torch

    first = torch.from_numpy(np.array(emb, dtype=np.float32))  # a copy: Arrow's buffers are read-only
    if modality == "image":
        col = table.column("regions").combine_chunks()
        regions = col.values.to_numpy().reshape(len(col), col.type.list_size // dim, dim)
        return first, torch.from_numpy(np.array(regions, dtype=np.float32))
    rows = [np.asarray(r, np.float32).reshape(-1, dim) for r in table.column("words").to_pylist()]
    n = max(len(r) for r in rows)
    words = np.zeros((len(rows), n, dim), np.float32)
    valid = np.zeros((len(rows), n), bool)
    for i, r in enumerate(rows):
        words[i, : len(r)], valid[i, : len(r)] = r, True
    return first, torch.from_numpy(words), torch.from_numpy(valid)


def encoder_slots(gpus_per_replica: float = 0.0) -> tuple[int, dict[str, float]]:
    """(replicas, Ray resources of each): one per GPU when asked for, else CPU slots but one."""
    import ray

    total = ray.cluster_resources()
    if gpus_per_replica > 0:
        gpus = float(total.get("GPU", 0))
        if gpus < gpus_per_replica:
            raise InputError(f"--gpus-per-replica {gpus_per_replica}: the cluster has {gpus:g} GPUs")
        return max(1, int(gpus // gpus_per_replica)), {"num_gpus": gpus_per_replica, "num_cpus": 1}
    return max(1, int(total.get("CPU", 1)) - 1), {"num_cpus": 1}


def build_index(run_uri: str, modality: str, table: str, out: str, model: str | None = None,
                batch_size: int = 4096, gpus_per_replica: float = 0.0, show_progress: bool = True) -> dict:
    """Encode ``table`` (Parquet: id, features[, labels]) into the index directory ``out``.

    Ray must be connected (``distributed.cluster.connect``). Returns the sidecar's content.
    """
    import ray.data

    run = load_run(run_uri, model=model, device="cpu")
    modality = run.check_modality(modality, "--modality")
    check_source(run, modality, table)
    check_out_dir(out)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = show_progress  # bars on a terminal
    replicas, resources = encoder_slots(gpus_per_replica)
    start = time.perf_counter()
    ds = ray.data.read_parquet(os.path.abspath(table))
    ds = ds.map_batches(BatchEncoder, fn_constructor_kwargs={
        "run_uri": run.location, "modality": modality, "model": run.model,
        "device": "cuda" if gpus_per_replica > 0 else "cpu", "where": table},
        batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=replicas), **resources)
    ds.write_parquet(os.path.abspath(out))
    rows = pads.dataset(out, format="parquet").count_rows()
    sidecar = {"format": FORMAT, "run": run.location, "kind": run.kind, "model": run.model,
               "modality": modality, "fingerprint": run.fingerprint,
               "projection_sha256": run.fingerprint if run.kind == "sdml" else None,
               "dim": int(run.embedding_dim or 0), "rows": int(rows),
               "search": "sdml" if run.kind == "sdml" else run.engine.mode, "source": os.path.abspath(table),
               "replicas": replicas, "seconds": round(time.perf_counter() - start, 3), "created": now_iso()}
    atomic_write_json(Path(out) / SIDECAR, sidecar)
    return sidecar


def check_source(run: TrainedRun, modality: str, table: str) -> None:
    """The source table's schema, before any work: an ``id`` and the feature column of the right
    width (the rows' values -- NaN, ragged vectors -- are checked batch by batch as they stream)."""
    if not Path(table).exists():
        raise MissingError(f"--table {table}: not found")
    try:
        schema = pads.dataset(table, format="parquet").schema
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"--table {table}: not a readable Parquet table ({e})") from None
    column = feature_column(run, modality)
    missing = [c for c in ("id", column) if c not in schema.names]
    if missing:
        raise InputError(f"--table {table}: no column {missing[0]!r} (columns: {', '.join(schema.names)})")
    kind = schema.field(column).type
    dim = run.input_dim(modality)
    if pa.types.is_fixed_size_list(kind) and dim and kind.list_size != dim:
        raise InputError(f"--table {table}: column {column!r} has width {kind.list_size}, the {modality!r} "
                         f"network takes {dim}")


# ---- reading indexes ---------------------------------------------------------------------------------
def read_index(path: str, run: TrainedRun, target_modality: str | None = None,
               field: str = "--index") -> Gallery:
    """An index directory as a :class:`Gallery`, after :func:`check_index` (branch runs: with the
    representation the model scores: MTFN's ṽ / t̃, MMCA's i0 / c0 and cross-attention input)."""
    meta, files = check_index(path, run, target_modality, field)
    table = pads.dataset(files, format="parquet").to_table()
    col = table.column("embedding").combine_chunks()
    emb = col.values.to_numpy().reshape(len(col), col.type.list_size)
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    reprs = None
    if run.kind != "sdml" and run.engine.mode == "pairwise":
        import torch

        reprs = torch.from_numpy(np.array(emb, dtype=np.float32))  # a copy: Arrow's buffers are read-only
    elif run.kind != "sdml" and run.engine.mode == "rerank":
        reprs = mmca_reprs(meta["modality"], table, emb, emb.shape[1])
    return Gallery(meta["modality"], ids, emb, labels_matrix(table, run.n_classes), reprs)
