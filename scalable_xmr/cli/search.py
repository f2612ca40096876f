"""``xmr index`` / ``xmr search`` / ``xmr serve``: use a finished run (docs/search.md).

    xmr index  --run runs/sdml --modality image --table items.parquet --out index/image
    xmr search --run runs/sdml --query-modality text --query-table q.parquet --target image \
               --index index/image
    xmr serve  --run runs/sdml --index image=index/image --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from scalable_xmr.cli.common import add_address_argument, add_verbose_argument
from scalable_xmr.distributed.logs import quiet_ray_data, set_verbose
from scalable_xmr.errors import InputError
from scalable_xmr.serving.preflight import check_out_dir, check_out_file, check_serve, open_run

INDEX_HELP = """Encode a Parquet table (id, features[, labels]) with a run's network into an index
(a directory of Parquet files: id, embedding[, labels], and _xmr_index.json naming the run and
P's sha256). Streams through Ray Data: read_parquet -> map_batches (one encoder replica per GPU,
or per CPU slot but one) -> write_parquet, so the table never has to fit in memory."""

SEARCH_HELP = """Search a gallery with the queries of a Parquet table (id, features[, labels]).
The gallery is an index from `xmr index` (--index) or the target modality's stored test split.
Prints (query id, rank, item id, score), or writes them to --out; with labels on both sides it
also prints mAP, mAP@k and precision@k. Every run is searched exactly (the whole gallery ranked by
the model's own score) unless --ann picks a faiss index or --depth asks an MMCA run for its
two-stage search; the "search" line says which ranking ran."""

SERVE_HELP = """Serve a run over HTTP with Ray Serve: SDML runs (any modality -> any other) and
image-text runs (VSE, VSA, MMCA, MTFN; image <-> text). One search deployment holds the galleries
and the run's networks (concurrent queries encoded together). GET /healthz (503 while deploying),
GET /modalities (what each modality accepts), POST /search {"query_modality", "target_modality",
"k", one of "features" | "id" | "text" | "tokens", MMCA: "depth"} -> {"hits": [{"id", "score"}],
"mode", "gallery"}. Every bad request is a 4xx JSON {"error": "<field>: ..."}. Prints "ready: URL"
once it answers; runs until Ctrl-C or SIGTERM, then shuts Serve down."""


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="DIR", required=True, help="a finished run (directory or pyarrow.fs URI)")
    p.add_argument("--model", metavar="NAME", default=None,
                   help="the member of a branch-model run that has several (e.g. vse)")


def _ann_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann", choices=("exact", "flat", "ivf", "hnsw"), default="exact",
                   help="exact chunked search (default), or a faiss index: flat (exact inner product), "
                   "ivf or hnsw (approximate)")


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("index", help="encode a Parquet table into a search index (Ray Data)",
                       description=INDEX_HELP, formatter_class=fmt)
    _run_arguments(p)
    p.add_argument("--modality", required=True, help="the run's modality the table holds")
    p.add_argument("--table", metavar="FILE", required=True, help="Parquet: id, features[, labels]")
    p.add_argument("--out", metavar="DIR", default=None, help="index directory (default: <table>.index)")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per encoder call (default 4096)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0,
                   help="GPUs per encoder replica (default 0: one replica per CPU slot but one)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    add_verbose_argument(p)
    add_address_argument(p.add_argument_group("cluster"))
    p.set_defaults(func=run_index)

    p = sub.add_parser("search", help="search a gallery with a query table", description=SEARCH_HELP,
                       formatter_class=fmt)
    _run_arguments(p)
    p.add_argument("--query-modality", required=True, help="modality of the query table")
    p.add_argument("--query-table", metavar="FILE", required=True, help="Parquet: id, features[, labels]")
    p.add_argument("--target", required=True, help="modality to search")
    p.add_argument("--index", metavar="DIR", default=None,
                   help="an index from `xmr index` (default: the target's stored --split)")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="the stored split searched without --index, and where mAP is computed (default test)")
    p.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--out", metavar="FILE", default=None, help="write the results to this Parquet file")
    p.add_argument("--limit", type=int, default=20, help="queries printed without --out (default 20)")
    _ann_argument(p)
    p.add_argument("--depth", type=int, default=None, metavar="D",
                   help="MMCA runs only: two-stage search, the D best by i0·c0 re-scored with the full S "
                   "(approximate; D from --k to the gallery size). Default: exact, the full S of every item")
    p.set_defaults(func=run_search)

    p = sub.add_parser("serve", help="serve a run over HTTP (Ray Serve)", description=SERVE_HELP,
                       formatter_class=fmt)
    _run_arguments(p)
    p.add_argument("--index", action="append", metavar="MODALITY=DIR", default=[],
                   help="gallery of a modality (repeat; default: its stored test split)")
    p.add_argument("--modality", action="append", default=None,
                   help="serve only these modalities (repeat; default: every modality of the run)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, default=1,
                   help="replicas of the search deployment, each with the run's networks (default 1)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default 0)")
    _ann_argument(p)
    p.add_argument("--verbose", action="store_true",
                   help="Ray Serve's own INFO logs and one access line per request (also XMR_DEBUG=1)")
    add_address_argument(p.add_argument_group("cluster"))
    p.set_defaults(func=run_serve)


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise InputError(f"{flag}: must be a positive integer, got {value}")
    return value


def run_index(args: argparse.Namespace) -> int:
    _positive(args.batch_size, "--batch-size")
    out = args.out or f"{args.table.rstrip('/')}.index"
    # Checked before torch or Ray load: the run, its modality, the table's presence, --out.
    open_run(args.run, args.model).check_modality(args.modality, "--modality")
    if not os.path.exists(args.table):
        raise InputError(f"--table {args.table}: not found")
    check_out_dir(out)
    from scalable_xmr.distributed.cluster import connect
    from scalable_xmr.serving.index import build_index

    set_verbose(args.verbose)
    connect(args.address)
    quiet_ray_data()
    side = build_index(args.run, args.modality, args.table, out, model=args.model, batch_size=args.batch_size,
                       gpus_per_replica=args.gpus_per_replica, show_progress=not args.no_progress)
    print(f"index         : {os.path.abspath(out)}")
    print(f"rows          : {side['rows']} {side['modality']} items, {side['dim']}-d embeddings")
    print(f"run           : {side['run']} (P sha256 {side['fingerprint'][:12]})")
    print(f"wall time     : {side['seconds']:.1f} s with {side['replicas']} encoder replica(s)")
    return 0


def run_search(args: argparse.Namespace) -> int:
    _positive(args.k, "--k")
    # Before torch loads: the run, its modalities, the query table's presence, --out.
    run = open_run(args.run, args.model)
    run.check_modality(args.query_modality, "--query-modality")
    run.check_modality(args.target, "--target")
    if not os.path.exists(args.query_table):
        raise InputError(f"--query-table {args.query_table}: not found")
    if args.out:
        check_out_file(args.out)
    from scalable_xmr.serving.query import SearchRequest, format_results, search_table, write_results

    outcome = search_table(SearchRequest(run=args.run, query_modality=args.query_modality,
                                         query_table=args.query_table, target=args.target, index=args.index,
                                         k=args.k, ann=args.ann, model=args.model, depth=args.depth,
                                         split=args.split))
    n = len(outcome.result.query_ids)
    if args.out:
        write_results(outcome.result, args.out)
        print(f"results       : {os.path.abspath(args.out)} ({n} queries x {args.k})")
    else:
        print(format_results(outcome.result, args.limit))
        if n > args.limit:
            print(f"... {n - args.limit} more queries (--out FILE writes them all)")
    print(f"gallery       : {outcome.gallery}")
    print(f"search        : {n} queries in {outcome.seconds:.3f} s, {outcome.result.mode}")
    if outcome.metrics:
        print(f"metrics over  : every row of --query-table ({n} queries) against the {outcome.gallery}")
    for name, value in (outcome.metrics or {}).items():
        print(f"{name:<14}: {value:.4f}")
    return 0


def parse_indexes(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        modality, sep, path = v.partition("=")
        if not sep or not modality or not path:
            raise InputError(f"--index: expected MODALITY=DIR, got {v!r}")
        out[modality] = path
    return out


def wait_ready(url: str, timeout: float = 120.0) -> None:
    """Until ``GET /healthz`` answers 200 (the placeholder answers 503 while deploying)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise InputError(f"{url}/healthz: not ready after {timeout:.0f} s")
        time.sleep(0.2)


def run_serve(args: argparse.Namespace) -> int:
    _positive(args.replicas, "--replicas")
    indexes = parse_indexes(args.index)
    # Everything that can be checked without torch or Ray, first: one line, exit 2, in a second.
    check_serve(args.run, indexes, args.modality, args.ann, args.model, args.host, args.port)
    from scalable_xmr.distributed.cluster import connect, started_local
    from scalable_xmr.serving import app

    app.set_verbose(set_verbose(args.verbose))

    connect(args.address)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))  # as Ctrl-C: shut Serve down, exit 0
    try:
        url = app.deploy(args.run, indexes, args.modality, host=args.host, port=args.port,
                         replicas=args.replicas, gpus_per_replica=args.gpus_per_replica, ann=args.ann,
                         model=args.model)
        wait_ready(url)
        print(f"ready: {url} (GET /healthz, GET /modalities, POST /search); Ctrl-C or kill stops it",
              flush=True)
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        app.shutdown(private_ray=started_local())
    print("stopped", file=sys.stderr)
    return 0
