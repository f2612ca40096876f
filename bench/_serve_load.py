"""`xmr serve` under load beside Ray Serve's own floor, all in one Serve instance and one run.

The floor is a bare echo deployment (``/echo``: the request body back, no parsing) behind the same
HTTP proxy. Each row is measured right after the echo row it is compared with (interleaved, so load
drift on a shared machine hits both): one client (p50, p99 over sequential requests), then 8 and 16
client threads for a fixed time (requests/s, p99). Rows: an SDML run and a VSE run, each with a
gallery of ``items`` rows built by ``xmr index``; queries by stored id and by input (SDML: a
feature vector; VSE: a caption's words). Used by ``search_speed.py``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _sdml_run(root: Path) -> str:
    from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia
    from scalable_xmr.sdml.job import TrainRequest, train_sdml

    make_synthetic_xmedia(str(root / "data"), scale="small", seed=0)
    run = str(root / "sdml")
    train_sdml(TrainRequest(run_dir=run, dataset_uri=str(root / "data"), modalities=("image", "text"),
                            sdml=SDMLConfig(epochs=2, batch_size=20),
                            resources=ResourceConfig(strategy="serial"),
                            tracking=TrackingConfig(enabled=False), show_progress=False))
    return run


def _vse_run(root: Path) -> tuple[str, str]:
    """A VSE member trained 1 epoch on synthetic pairs (region features 8 x 64), in a pairs run."""
    from scalable_xmr.branch.config import PairTrainerConfig
    from scalable_xmr.branch.member import BranchSpec, train_branch
    from scalable_xmr.data.paired import make_synthetic_pairs
    from scalable_xmr.store.meta import RunMeta
    from scalable_xmr.store.run_store import RunStore

    data = str(make_synthetic_pairs(root / "pairs", seed=0, n_train=500, n_val=50, n_test=100))
    store = RunStore(root / "vse")
    store.root.mkdir(parents=True)
    train_branch(BranchSpec(out_dir=str(store.member_dir("vse")), dataset_uri=data, device="cpu",
                           trainer=PairTrainerConfig(model="vse", epochs=1, batch_size=50), save_sims=False,
                           ks=(1,), k_texts=(1,)))
    meta = RunMeta(kind="branch", dataset={"uri": data, "name": "synthetic-pairs"}, models=["vse"],
                   members={"vse": {"status": "finished", "model": "vse"}})
    meta.finish()
    store.write(meta)
    return str(store.root), data


def _index(run: str, modality: str, table: Path, out: Path, features: np.ndarray,
           model: str | None) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scalable_xmr.serving.index import build_index

    n, width = features.shape[0], int(np.prod(features.shape[1:]))
    col = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), width)
    if features.ndim == 3:  # region features: a list of region vectors per row
        col = pa.array([r.tolist() for r in features], pa.list_(pa.list_(pa.float32())))
    pq.write_table(pa.table({"id": [f"item{i}" for i in range(n)], "features": col}), table,
                   row_group_size=2500)
    t0 = time.perf_counter()
    build_index(run, modality, str(table), str(out), model=model, show_progress=False)
    return time.perf_counter() - t0


def _post(url: str, body: bytes) -> float:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - t


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return 1e3 * s[min(len(s) - 1, int(q * len(s)))]


def _client(url: str, body: bytes, seconds: float) -> list[float]:
    end, lat = time.perf_counter() + seconds, []
    while time.perf_counter() < end:
        lat.append(_post(url, body))
    return lat


def measure(url: str, body: bytes, requests: int, seconds: float) -> dict:
    """One client: ``requests`` sequential requests; then 8 and 16 clients for ``seconds`` each."""
    for _ in range(10):
        _post(url, body)  # warm up
    one = [_post(url, body) for _ in range(requests)]
    out = {"p50_ms": 1e3 * statistics.median(one), "p99_ms": _p(one, 0.99)}
    for clients in (8, 16):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            done = pool.map(lambda _: _client(url, body, seconds), range(clients))
            lat = [v for mine in done for v in mine]
        wall = time.perf_counter() - t0
        out[f"rps_{clients}"], out[f"p99_{clients}_ms"] = len(lat) / wall, _p(lat, 0.99)
    return out


def in_process(run: str, model: str | None, indexes: dict[str, str], body: dict, repeats: int) -> dict:
    """Where a request's time goes inside the replica: the same Searcher, called in this process
    (no HTTP, no Serve): median ms of checking (prepare), encoding and ranking one query."""
    from scalable_xmr.serving.schema import SearchRequest
    from scalable_xmr.serving.service import Searcher

    searcher = Searcher(run, indexes, model=model)
    req = SearchRequest.model_validate(body)
    times: dict[str, list[float]] = {"prepare": [], "encode": [], "rank": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        query = searcher.prepare(req)
        t1 = time.perf_counter()
        searcher.encoded(query)
        t2 = time.perf_counter()
        searcher.rank(req, query)
        t3 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[key].append(dt)
    return {f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()}


def serve_table(items: int, requests: int, seconds: float) -> tuple[list[dict], dict]:
    """Rows (target, query, figures, ratios to the echo row measured just before) and setup facts."""
    import ray
    from ray import serve

    from scalable_xmr.data.paired import open_paired_dataset
    from scalable_xmr.serving import app, load_run

    root = Path(tempfile.mkdtemp(prefix="xmr-bench-serve-"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    sdml = _sdml_run(root)
    vse, pairs = _vse_run(root)
    rng = np.random.default_rng(2)
    setup = {"items": items,
             "sdml_index_s": _index(sdml, "image", root / "sdml-items.parquet", root / "sdml-index",
                                    rng.standard_normal((items, 64)).astype(np.float32), None),
             "vse_index_s": _index(vse, "image", root / "vse-items.parquet", root / "vse-index",
                                   rng.standard_normal((items, 8, 64)).astype(np.float32), "vse")}

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, logging_config={"log_level": "WARNING",
                                                                           "enable_access_log": False})
    class Echo:
        async def __call__(self, request):
            from starlette.responses import Response

            return Response(await request.body(), media_type="application/json")

    port = _free_port()
    rows: list[dict] = []
    split = open_paired_dataset(pairs).read_split("test")
    vocab = open_paired_dataset(pairs).vocab
    words = " ".join(vocab[t] for t in split.tokens[0, : split.lengths[0]])
    text_ids, _, _ = load_run(sdml).embeddings("text")
    cases = [
        ("sdml", sdml, None, {"image": str(root / "sdml-index")}, [
            ("id", {"query_modality": "text", "id": str(text_ids[0]), "target_modality": "image", "k": 10}),
            ("features", {"query_modality": "text", "features": [0.1] * 80, "target_modality": "image",
                          "k": 10})]),
        ("vse", vse, "vse", {"image": str(root / "vse-index")}, [
            ("id", {"query_modality": "text", "id": str(split.caption_ids[0]), "target_modality": "image",
                    "k": 10}),
            ("text", {"query_modality": "text", "text": words, "target_modality": "image", "k": 10})]),
    ]
    first = True
    for name, run, model, indexes, queries in cases:
        url = app.deploy(run, indexes, port=port, model=model)
        if first:
            serve.run(Echo.bind(), name="echo", route_prefix="/echo")
            first = False
        for query, body in queries:
            raw = json.dumps(body).encode()
            floor = measure(f"{url}/echo", raw, requests, seconds)
            ours = measure(f"{url}/search", raw, requests, seconds)
            rows.append({"target": f"echo (before {name} by {query})", **floor})
            inside = in_process(run, model, indexes, body, requests)
            rows.append({"target": f"{name} by {query} ({items:,} items)", **ours, **inside,
                         "p50_x_echo": ours["p50_ms"] / floor["p50_ms"],
                         "rps8_of_echo": ours["rps_8"] / floor["rps_8"],
                         "rps16_of_echo": ours["rps_16"] / floor["rps_16"]})
        serve.delete(app.APP)
    serve.shutdown()
    ray.shutdown()
    return rows, setup


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
