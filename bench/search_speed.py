"""Search and serve speed: exact top-10 vs the GEMM floor, faiss recall@10 and latency, Serve QPS.

    .venv/bin/python bench/search_speed.py            # 1M x 512 exact; 200k faiss; Serve, 8 clients
    .venv/bin/python bench/search_speed.py --quick    # tiny sizes, a smoke test

1. Exact: ``serving.search.exact_topk`` of 100 queries over a 1,000,000 x 512 float32 gallery
   (2 GB, unit vectors), against the GEMM floor of the same work measured in the same run: the
   matmuls alone over the same blocks (no top-k), and one (100 x 512) @ (512 x 1M) matmul.
2. faiss (``serving.ann``): flat, IVF and HNSW over a clustered gallery (1,000 centres + noise, the
   shape trained embeddings have), recall@10 against exact search and the latency of a 100-query
   batch and of one query; build seconds.
3. Serve (``serving.app``): a small run trained here (synthetic data, 2 modalities, d 512), an index
   of 20,000 items from ``xmr index``'s Ray Data path, ``xmr serve``'s application on 127.0.0.1,
   and 8 client threads sending POST /search (text features -> image index, k 10) for a fixed time:
   requests/s, p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from scalable_xmr.serving.ann import AnnIndex, recall_at_k
from scalable_xmr.serving.search import exact_topk, gemm_flops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, machine_info  # noqa: E402


def unit_rows(rng: np.random.Generator, n: int, d: int, block: int = 100_000) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    for s in range(0, n, block):
        x = rng.standard_normal((min(block, n - s), d), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def clustered(rng: np.random.Generator, n: int, d: int, centres: int = 1000,
              noise: float = 0.6) -> np.ndarray:
    c = unit_rows(rng, centres, d)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_vs_gemm(n: int, d: int, q: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    gallery = unit_rows(rng, n, d)
    query = gallery[rng.integers(0, n, q)] + 0.1 * rng.standard_normal((q, d), dtype=np.float32)
    qt, gt = torch.from_numpy(query), torch.from_numpy(gallery)
    chunk = 65_536

    def blocks_only():
        for s in range(0, n, chunk):
            qt @ gt[s : s + chunk].T

    # Interleaved repeats (exact, blocks, one, exact, ...), best of each: on a shared machine the
    # load drifts, and a ratio is only fair when both sides saw the same spells of it.
    timed = {"exact_topk_s": lambda: exact_topk(query, gallery, 10, chunk), "gemm_blocks_s": blocks_only,
             "gemm_one_s": lambda: qt @ gt.T}
    best = {key: float("inf") for key in timed}
    for _ in range(repeats):
        for key, fn in timed.items():
            best[key] = min(best[key], best_time(fn, 1))
    out = {"gallery": f"{n:,} x {d}", "queries": q, "gflop": gemm_flops(q, n, d) / 1e9, **best}
    out["gemm_gflops"] = out["gflop"] / out["gemm_one_s"]
    out["ratio_to_floor"] = out["exact_topk_s"] / min(out["gemm_blocks_s"], out["gemm_one_s"])
    return out


def ann_table(n: int, d: int, q: int) -> list[dict]:
    rng = np.random.default_rng(1)
    gallery = clustered(rng, n, d)
    query = gallery[rng.integers(0, n, q)] + 0.3 * rng.standard_normal((q, d), dtype=np.float32) / np.sqrt(d)
    exact_idx, _ = exact_topk(query, gallery, 10)
    rows = [{"index": "exact (chunked matmul)", "build_s": 0.0, "recall@10": 1.0,
             "batch_s": best_time(lambda: exact_topk(query, gallery, 10), 2),
             "one_ms": 1e3 * best_time(lambda: exact_topk(query[:1], gallery, 10), 3)}]
    for kind in ("flat", "ivf", "hnsw"):
        t0 = time.perf_counter()
        index = AnnIndex.build(gallery, kind)
        build = time.perf_counter() - t0
        idx, _ = index.search(query, 10)
        rows.append({"index": kind, "build_s": build, "recall@10": recall_at_k(idx, exact_idx),
                     "batch_s": best_time(lambda index=index: index.search(query, 10), 2),
                     "one_ms": 1e3 * best_time(lambda index=index: index.search(query[:1], 10), 3)})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_load(items: int, seconds: float, clients: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia
    from scalable_xmr.sdml.job import TrainRequest, train_sdml
    from scalable_xmr.serving import app
    from scalable_xmr.serving.index import build_index

    root = Path(tempfile.mkdtemp(prefix="xmr-bench-serve-"))
    make_synthetic_xmedia(str(root / "data"), scale="small", seed=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    run = str(root / "run")
    train_sdml(TrainRequest(run_dir=run, dataset_uri=str(root / "data"), modalities=("image", "text"),
                            sdml=SDMLConfig(epochs=2, batch_size=20),
                            resources=ResourceConfig(strategy="serial"),
                            tracking=TrackingConfig(enabled=False), show_progress=False))
    x = np.random.default_rng(2).standard_normal((items, 64)).astype(np.float32)
    pq.write_table(pa.table({"id": [f"item{i}" for i in range(items)],
                             "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 64)}),
                   root / "items.parquet")
    t0 = time.perf_counter()
    build_index(run, "image", str(root / "items.parquet"), str(root / "index"), show_progress=False)
    index_s = time.perf_counter() - t0
    port = free_port()
    url = app.deploy(run, {"image": str(root / "index")}, port=port)
    body = json.dumps({"query_modality": "text", "features": [0.1] * 80, "target_modality": "image",
                       "k": 10}).encode()

    def one() -> float:
        req = urllib.request.Request(f"{url}/search", data=body, method="POST")
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and len(json.loads(r.read())) == 10
        return time.perf_counter() - t

    for _ in range(20):
        one()  # warm up

    def client(_: int) -> list[float]:
        lat, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            lat.append(one())
        return lat

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(v for lat in pool.map(client, range(clients)) for v in lat)
    wall = time.perf_counter() - t0
    app.shutdown()
    ray.shutdown()
    return {"items": items, "index_s": index_s, "clients": clients, "requests": len(latencies),
            "rps": len(latencies) / wall, "p50_ms": 1e3 * statistics.median(latencies),
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--skip", action="append", default=[], choices=("exact", "ann", "serve"))
    args = p.parse_args()
    n, ann_n, items, secs = (20_000, 5_000, 2_000, 3.0) if args.quick else (1_000_000, 200_000, 20_000, 20.0)
    for key, value in machine_info(torch.get_num_threads()):
        print(f"{key:<14}: {value}")
    if "exact" not in args.skip:
        e = exact_vs_gemm(n, 512, 100, repeats=2 if args.quick else 5)
        print(f"\nexact top-10, 100 queries over {e['gallery']} ({e['gflop']:.1f} GFLOP):")
        print(f"  exact_topk {e['exact_topk_s']:.3f} s | GEMM floor: same blocks {e['gemm_blocks_s']:.3f} s, "
              f"one matmul {e['gemm_one_s']:.3f} s ({e['gemm_gflops']:.1f} GFLOP/s) | "
              f"exact / floor {e['ratio_to_floor']:.2f}x")
    if "ann" not in args.skip:
        print(f"\nfaiss over {ann_n:,} x 512 (clustered), 100 queries:")
        print(f"  {'index':<24}{'build s':>9}{'recall@10':>11}{'100 q s':>10}{'1 q ms':>9}")
        for r in ann_table(ann_n, 512, 100):
            print(f"  {r['index']:<24}{r['build_s']:>9.1f}{r['recall@10']:>11.3f}{r['batch_s']:>10.3f}"
                  f"{r['one_ms']:>9.2f}")
    if "serve" not in args.skip:
        s = serve_load(items, secs, 8)
        print(f"\nServe: {s['clients']} clients, POST /search over a {s['items']:,}-item index "
              f"(built in {s['index_s']:.1f} s): {s['requests']} requests, {s['rps']:.1f} req/s, "
              f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
