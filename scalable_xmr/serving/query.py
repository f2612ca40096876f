"""``xmr search`` as a library call: a query table against a gallery, exact or through faiss.

:func:`search_table` reads the queries (Parquet: ``id``, ``features`` or ``tokens``, optional
``labels``), encodes them with the run, ranks the gallery -- an index built by ``xmr index`` or the
target modality's stored test embeddings -- and, when both sides carry class labels, scores the
ranking with ``functional.retrieval``: mAP over the whole gallery, mAP@k and precision@k (SDML's
metrics; relevance = sharing a label, docs/metrics.md). No Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval import mean_average_precision, precision_scope_curve
from scalable_xmr.io import atomic_path
from scalable_xmr.serving.ann import KINDS, AnnIndex, ann_mode
from scalable_xmr.serving.index import feature_column, features_of, labels_matrix, read_index, read_table
from scalable_xmr.serving.run import Gallery, load_run
from scalable_xmr.serving.search import SearchResult, check_k, exact_topk, result_from


@dataclass(frozen=True)
class SearchRequest:
    run: str
    query_modality: str
    query_table: str
    target: str
    index: str | None = None  # an `xmr index` directory; None: the target's stored test split
    k: int = 10
    ann: str = "exact"  # exact | flat | ivf | hnsw
    model: str | None = None  # a branch run's member
    device: str = "auto"
    depth: int | None = None  # MMCA: two-stage search with this first-stage depth (None: exact)
    split: str = "test"  # the stored split searched when there is no index


@dataclass
class SearchOutcome:
    result: SearchResult
    metrics: dict[str, float] | None
    gallery: str  # what was searched, for the user
    seconds: float


def search_table(req: SearchRequest) -> SearchOutcome:
    if req.ann not in KINDS:
        raise InputError(f"--ann: expected one of {', '.join(KINDS)}, got {req.ann!r}")
    run = load_run(req.run, model=req.model, device=req.device)
    q_mod = run.check_modality(req.query_modality, "--query-modality")
    target = run.check_modality(req.target, "--target")
    by_embedding = run.kind == "sdml" or run.engine.mode == "embedding"
    if req.ann != "exact" and not by_embedding:
        raise InputError(f"--ann {req.ann}: a {run.model} run scores pairs (no per-item embedding for "
                         "faiss); use --ann exact")
    if req.depth is not None and (run.kind == "sdml" or run.engine.mode != "rerank"):
        what = "an SDML" if run.kind == "sdml" else f"a {run.model}"
        raise InputError(f"--depth: only MMCA runs have a two-stage search; {what} search is exact "
                         f"(got --depth {req.depth})")
    if req.index:
        gallery, where = read_index(req.index, run, target), f"index {req.index}"
    else:
        gallery, where = run.gallery(target, req.split), f"{target} {req.split} split of the run"
    check_k(req.k, len(gallery), "--k")
    if not by_embedding:
        run.engine.check_depth(req.depth, req.k, len(gallery), "--depth")
    table = read_table(req.query_table, "--query-table")
    if "id" not in table.column_names:
        raise InputError(f"--query-table {req.query_table}: no column 'id' "
                         f"(columns: {', '.join(table.column_names)})")
    column = feature_column(run, q_mod)
    features = features_of(table, column, f"--query-table {req.query_table}")
    ids = [str(i) for i in table.column("id").to_pylist()]
    start = time.perf_counter()
    query_emb = None
    if by_embedding:  # SDML, VSE, VSA: one embedding per item, cosine ranking
        query_emb = run.encode(q_mod, features)
        if req.ann == "exact":
            idx, scores = exact_topk(query_emb, gallery.embeddings, req.k, device=run.device)
            mode = "exact (cosine of stored embeddings)"
        else:
            idx, scores = AnnIndex.build(gallery.embeddings, req.ann).search(query_emb, req.k)
            mode = ann_mode(req.ann)
    else:
        found = run.search(q_mod, features, target, req.k, gallery=gallery, depth=req.depth)
        idx, scores, mode = found.indices, found.scores, found.mode
    result = result_from(ids, gallery.ids, idx, scores, mode)
    seconds = time.perf_counter() - start
    metrics = None
    q_labels = labels_matrix(table, run.n_classes)
    if q_labels is not None and gallery.labels is not None and query_emb is not None:
        metrics = retrieval_metrics(query_emb, gallery, q_labels, req.k)
    return SearchOutcome(result, metrics, where, seconds)


def retrieval_metrics(query_emb: np.ndarray, gallery: Gallery, query_labels: np.ndarray,
                      k: int) -> dict[str, float]:
    """mAP (whole gallery), mAP@k and precision@k of the exact cosine ranking (functional.retrieval)."""
    args = (query_emb, gallery.embeddings, query_labels, gallery.labels)
    _, precision = precision_scope_curve(*args, scopes=[k])
    return {"map": mean_average_precision(*args), f"map@{k}": mean_average_precision(*args, top_k=k),
            f"precision@{k}": float(precision[0])}


def results_table(result: SearchResult) -> pa.Table:
    rows = result.rows()
    return pa.table({"query_id": pa.array([r["query_id"] for r in rows], pa.string()),
                     "rank": pa.array([r["rank"] for r in rows], pa.int32()),
                     "id": pa.array([r["id"] for r in rows], pa.string()),
                     "score": pa.array([r["score"] for r in rows], pa.float32())})


def write_results(result: SearchResult, path: str) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(results_table(result), tmp)


def format_results(result: SearchResult, limit: int | None = None) -> str:
    """A plain text table: query id, rank, item id, score (``limit`` queries at most)."""
    rows = result.rows()
    if limit is not None:
        rows = rows[: limit * result.ids.shape[1]]
    w_q = max([8, *(len(r["query_id"]) for r in rows)])
    w_i = max([7, *(len(r["id"]) for r in rows)])
    lines = [f"{'query id':<{w_q}}  rank  {'item id':<{w_i}}  score", "-" * (w_q + w_i + 20)]
    lines += [f"{r['query_id']:<{w_q}}  {r['rank']:>4}  {r['id']:<{w_i}}  {r['score']:.4f}" for r in rows]
    return "\n".join(lines)
