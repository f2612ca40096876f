"""`xmr index` (Ray Data), `xmr search` and `xmr serve` (Ray Serve) end to end on a run trained
with `xmr train` on the session's local Ray; the server answers real HTTP on 127.0.0.1.

The same walk-through as README's "Search and serve" section.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from one_line import fails_one_line

from scalable_xmr.cli import main
from scalable_xmr.serving import load_run
from scalable_xmr.serving.index import SIDECAR

pytestmark = pytest.mark.slow
N_ITEMS = 2500  # > one --batch-size (256): the index streams through several encoder calls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 60.0) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:  # Serve's proxy answers plain text (404) until the app is deployed
        return status, raw.decode(errors="replace")


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"xmr serve exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            if http(f"{url}/healthz", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"{url}/healthz did not answer within {timeout:.0f} s")


def feature_table(path: Path, n: int, dim: int, seed: int, prefix: str) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    pq.write_table(pa.table({
        "id": pa.array([f"{prefix}{i}" for i in range(n)], pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        "labels": pa.array([[i % 20] for i in range(n)], pa.list_(pa.int32())),
    }), path, row_group_size=500)
    return x


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, small_xmedia, ray_local):
    """A 2-modality run from `xmr train`, a 2500-row image table and its index from `xmr index`."""
    root = tmp_path_factory.mktemp("serve")
    run = str(root / "run")
    assert main(["train", "--data", small_xmedia, "--run", run, "--modality", "image", "--modality", "text",
                 "--epochs", "1", "--dim", "32", "--batch-size", "20", "--strategy", "serial",
                 "--no-tracking", "--no-progress"]) == 0
    items = feature_table(root / "items.parquet", N_ITEMS, 64, seed=0, prefix="item")
    assert main(["index", "--run", run, "--modality", "image", "--table", str(root / "items.parquet"),
                 "--out", str(root / "index"), "--batch-size", "256", "--no-progress"]) == 0
    return root, run, items


def index_embeddings(index: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(sorted(str(p) for p in index.glob("*.parquet")))
    col = table.column("embedding").combine_chunks()
    return table.column("id").to_pylist(), col.values.to_numpy().reshape(len(col), col.type.list_size)


def test_index_holds_every_row_encoded_by_the_run(indexed):
    root, run, items = indexed
    ids, emb = index_embeddings(root / "index")
    assert sorted(ids) == sorted(f"item{i}" for i in range(N_ITEMS))
    side = json.loads((root / "index" / SIDECAR).read_text())
    trained = load_run(run)
    assert side["rows"] == N_ITEMS and side["fingerprint"] == trained.fingerprint
    assert side["projection_sha256"] == json.loads(Path(run, "run.json").read_text())["projection"]["sha256"]
    order = [int(i.removeprefix("item")) for i in ids]
    np.testing.assert_allclose(emb, trained.encode("image", items[order]), atol=1e-5)


def test_index_bad_input_is_one_line(indexed, tmp_path, capsys):
    root, run, _ = indexed
    feature_table(tmp_path / "narrow.parquet", 10, 63, seed=1, prefix="x")
    fails_one_line(main, capsys, ["index", "--run", run, "--modality", "image", "--table",
                                  str(tmp_path / "narrow.parquet"), "--out", str(tmp_path / "i")],
                   "column 'features' has width 63, the 'image' network takes 64")
    fails_one_line(main, capsys, ["index", "--run", run, "--modality", "audio", "--table",
                                  str(root / "items.parquet")], "--modality: unknown modality 'audio'")


def test_search_cli_over_the_index_equals_numpy(indexed, tmp_path, capsys):
    root, run, _ = indexed
    queries = feature_table(tmp_path / "q.parquet", 7, 80, seed=2, prefix="q")
    out = tmp_path / "results.parquet"
    assert main(["search", "--run", run, "--query-modality", "text",
                 "--query-table", str(tmp_path / "q.parquet"),
                 "--target", "image", "--index", str(root / "index"), "--k", "10", "--out", str(out)]) == 0
    assert "map@10" in capsys.readouterr().out  # both tables carry labels
    results = pq.read_table(out).to_pylist()
    ids, emb = index_embeddings(root / "index")
    q = load_run(run).encode("text", queries).astype(np.float64)
    ref = q @ emb.astype(np.float64).T  # (7, 2500)
    pos = {i: n for n, i in enumerate(ids)}
    for qi in range(7):
        rows = [r for r in results if r["query_id"] == f"q{qi}"]
        assert [r["rank"] for r in rows] == list(range(1, 11))
        got = np.array([r["score"] for r in rows])
        np.testing.assert_allclose(got, ref[qi, [pos[r["id"]] for r in rows]], atol=1e-5)
        assert np.sort(ref[qi])[::-1][9] <= got[-1] + 1e-5


def test_serve_answers_concurrent_http_and_bad_requests_then_stops(indexed):
    root, run, _ = indexed
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    xmr = Path(sys.executable).with_name("xmr")
    proc = subprocess.Popen([str(xmr), "serve", "--run", run, "--index", f"image={root / 'index'}",
                             "--host", "127.0.0.1", "--port", str(port), "--address", "local"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        wait_healthy(url, proc)
        deadline = time.monotonic() + 120  # the CLI says it is ready once every deployment answers
        while not any(line.startswith("ready") for line in lines) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert any(line.startswith(f"ready: {url} ") for line in lines), lines
        assert http(f"{url}/modalities")[1]["image"]["gallery_size"] == N_ITEMS
        text_ids, _, _ = load_run(run).embeddings("text")
        rng = np.random.default_rng(3)
        bodies = [{"query_modality": "text", "id": str(text_ids[i % len(text_ids)]),
                   "target_modality": "image", "k": 5} for i in range(8)]
        bodies += [{"query_modality": "text", "features": rng.standard_normal(80).tolist(),
                    "target_modality": "image", "k": 3} for _ in range(8)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: http(f"{url}/search", b), bodies))
        assert all(status == 200 for status, _ in answers), answers
        assert [len(a["hits"]) for _, a in answers] == [5] * 8 + [3] * 8
        assert all(a["hits"][0]["score"] >= a["hits"][-1]["score"] for _, a in answers)
        assert answers[0][1]["mode"] == "exact (cosine of stored embeddings)"
        assert answers[0][1]["gallery"] == f"image index {root / 'index'}"
        by_id = http(f"{url}/search", bodies[0])[1]
        assert by_id == answers[0][1]  # the same query twice: the same answer
        bad = [({**bodies[8], "features": [0.0] * 79}, "features (text): expected shape (n, 80)"),
               ({**bodies[8], "features": [float("nan")] * 80},
                "features.0: Input should be a finite number"),
               ({**bodies[8], "query_modality": "smell"}, "query_modality: unknown modality 'smell'"),
               ({**bodies[8], "k": N_ITEMS + 1},
                f"k: must be an integer from 1 to the gallery size {N_ITEMS}"),
               ({**bodies[0], "id": "nope"}, "id: 'nope' is not a stored 'text' test item")]
        for body, message in bad:
            status, answer = http(f"{url}/search", body)
            assert 400 <= status < 500 and "error" in answer, (status, answer)
            assert message is None or message in answer["error"], answer
        assert http(f"{url}/healthz")[0] == 200  # still serving
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, proc.stderr.read()[-3000:]
    with pytest.raises(OSError):
        http(f"{url}/healthz", timeout=5)


def test_a_modality_added_later_is_served_without_stopping_the_service(indexed, ray_local):
    from scalable_xmr.serving import app

    root, run, _ = indexed
    port = free_port()
    url = app.deploy(run, port=port)
    try:
        wait_healthy(url)
        assert main(["add-modality", "--run", run, "--modality", "audio", "--data", dataset_of(run),
                     "--epochs", "1", "--cpus-per-modality", "1", "--no-tracking", "--no-progress"]) == 0
        text_query = {"query_modality": "text", "features": [0.5] * 80, "target_modality": "image", "k": 2}
        answered: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:  # the old modalities are answered while the app is re-deployed
            while not stop.is_set():
                answered.append(http(f"{url}/search", text_query)[0])

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            assert app.deploy_modality(run, "audio") == 20  # the audio test split is its gallery
        finally:
            stop.set()
            asker.join()
        assert answered and set(answered) == {200}, answered
        status, answer = http(f"{url}/search", {"query_modality": "audio", "features": [0.5] * 16,
                                                "target_modality": "image", "k": 2})
        assert status == 200 and len(answer["hits"]) == 2
        assert "audio" in http(f"{url}/modalities")[1]
    finally:
        app.shutdown()


def dataset_of(run: str) -> str:
    return json.loads(Path(run, "run.json").read_text())["dataset"]["uri"]
