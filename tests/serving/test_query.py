"""``xmr search`` without Ray (stored galleries, hand-made index directories) and its bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from one_line import fails_one_line

from scalable_xmr.cli import main
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.serving import load_run
from scalable_xmr.serving.index import SIDECAR, read_index
from scalable_xmr.serving.query import SearchRequest, search_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_query_table(path, ids, features, labels=None) -> str:
    cols = {"id": pa.array([str(i) for i in ids], pa.string()),
            "features": pa.FixedSizeListArray.from_arrays(
                pa.array(np.asarray(features, np.float32).reshape(-1)), np.asarray(features).shape[1])}
    if labels is not None:
        cols["labels"] = pa.array([np.flatnonzero(r).tolist() for r in labels], pa.list_(pa.int32()))
    pq.write_table(pa.table(cols), path)
    return str(path)


def write_index(path, run, modality, ids, emb, fingerprint=None) -> str:
    """An index directory as `xmr index` writes it, made by hand (no Ray here)."""
    path.mkdir()
    pq.write_table(pa.table({"id": pa.array(list(ids), pa.string()),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)),
                                                                            emb.shape[1])}),
                   path / "part-0.parquet")
    (path / SIDECAR).write_text(json.dumps({"format": "scalable_xmr.index/1", "run": str(run.uri),
                                            "modality": modality,
                                            "fingerprint": fingerprint or run.fingerprint}))
    return str(path)


def map_loop(q, g, ql, gl, k=None) -> float:
    """Mean average precision by hand: stable descending cosine order, relevance = shared label."""
    sim = q.astype(np.float64) @ g.astype(np.float64).T
    aps = []
    for i in range(len(q)):
        order = np.argsort(-sim[i], kind="stable")[: k or len(g)]
        rel = (gl[order] @ ql[i]) > 0
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, len(rel) + 1))[rel].mean()) if rel.any() else 0.0)
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def text_queries(sdml_run, small_xmedia, tmp_path_factory):
    split = open_dataset(small_xmedia).read_split("text", "test")
    path = tmp_path_factory.mktemp("queries") / "q.parquet"
    return write_query_table(path, split.ids, split.features, split.labels), split


def test_search_table_scores_with_labels(sdml_run, text_queries):
    path, split = text_queries
    out = search_table(SearchRequest(run=sdml_run, query_modality="text", query_table=path, target="image",
                                     k=5))
    assert out.result.ids.shape == (len(split), 5)
    run = load_run(sdml_run)
    _, g_labels, g_emb = run.embeddings("image")
    _, _, q_emb = run.embeddings("text")
    assert out.metrics["map"] == pytest.approx(map_loop(q_emb, g_emb, split.labels, g_labels), abs=1e-5)
    at_5 = map_loop(q_emb, g_emb, split.labels, g_labels, k=5)
    assert out.metrics["map@5"] == pytest.approx(at_5, abs=1e-5)
    # precision@5 by hand from the returned ids
    label_of = dict(zip(run.embeddings("image")[0], g_labels, strict=True))
    hits = [[(label_of[i] @ split.labels[q]) > 0 for i in out.result.ids[q]] for q in range(len(split))]
    assert out.metrics["precision@5"] == pytest.approx(float(np.mean(hits)), abs=1e-6)


def test_cli_prints_the_table_and_writes_parquet(sdml_run, text_queries, tmp_path, capsys):
    path, split = text_queries
    assert main(["search", "--run", sdml_run, "--query-modality", "text", "--query-table", path,
                 "--target", "image", "--k", "3", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "query id" in out and "rank" in out and f"{split.ids[0]}" in out and "map@3" in out
    res = tmp_path / "r.parquet"
    assert main(["search", "--run", sdml_run, "--query-modality", "text", "--query-table", path,
                 "--target", "image", "--k", "3", "--out", str(res)]) == 0
    table = pq.read_table(res)
    assert table.column_names == ["query_id", "rank", "id", "score"] and table.num_rows == 3 * len(split)
    assert table.column("rank").to_pylist()[:3] == [1, 2, 3]


def test_search_an_index_and_through_faiss(sdml_run, text_queries, tmp_path):
    path, _ = text_queries
    run = load_run(sdml_run)
    ids, _, emb = run.embeddings("image", "val")
    index = write_index(tmp_path / "idx", run, "image", ids, emb)
    exact = search_table(SearchRequest(sdml_run, "text", path, "image", index=index, k=4))
    flat = search_table(SearchRequest(sdml_run, "text", path, "image", index=index, k=4, ann="flat"))
    assert set(exact.result.ids[:, 0]) <= set(ids)
    np.testing.assert_allclose(exact.result.scores, flat.result.scores, atol=1e-5)
    assert exact.metrics is None  # the index has no labels


def test_an_index_of_another_run_is_refused(sdml_run, tmp_path):
    run = load_run(sdml_run)
    ids, _, emb = run.embeddings("image", "val")
    index = write_index(tmp_path / "idx", run, "image", ids, emb, fingerprint="f" * 64)
    with pytest.raises(InputError, match=r"--index .*: built by another run \(P sha256 ffffffffffff"):
        read_index(index, run, "image")
    with pytest.raises(InputError, match=r"holds 'image' items, the target is 'text'"):
        read_index(write_index(tmp_path / "idx2", run, "image", ids, emb), run, "text")


@pytest.mark.parametrize("extra, message", [
    (["--target", "smell"], "--target: unknown modality 'smell'"),
    (["--target", "image", "--k", "0"], "--k: must be a positive integer, got 0"),
    (["--target", "image", "--k", "31"], "--k: must be an integer from 1 to the gallery size 30, got 31"),
    (["--target", "image", "--ann", "ivf", "--index", "/nonexistent"], "--index /nonexistent: not an index"),
])
def test_cli_bad_input_is_one_line(sdml_run, text_queries, capsys, extra, message):
    path, _ = text_queries
    fails_one_line(main, capsys, ["search", "--run", sdml_run, "--query-modality", "text",
                                  "--query-table", path, *extra], message)


def test_cli_refuses_wrong_width_and_nan_queries(sdml_run, tmp_path, capsys):
    narrow = write_query_table(tmp_path / "narrow.parquet", ["a"], np.zeros((1, 79)))
    fails_one_line(main, capsys, ["search", "--run", sdml_run, "--query-modality", "text", "--query-table",
                                  narrow, "--target", "image"],
                   "expected shape (n, 80) with n >= 1, got (1, 79)")
    nan = np.zeros((2, 80))
    nan[1, 4] = np.nan
    bad = write_query_table(tmp_path / "nan.parquet", ["a", "b"], nan)
    fails_one_line(main, capsys, ["search", "--run", sdml_run, "--query-modality", "text", "--query-table",
                                  bad, "--target", "image"], "NaN or inf at row 1, column 4")


def test_cli_refuses_an_unfinished_run(sdml_run, text_queries, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(sdml_run, tmp_path / "run")
    meta = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**meta, "status": "failed", "error": "x"}))
    fails_one_line(main, capsys, ["search", "--run", str(copy), "--query-modality", "text", "--query-table",
                                  text_queries[0], "--target", "image"],
                   "not a finished run (status 'failed')")


@pytest.fixture(scope="module")
def caption_queries(branch_run, tmp_path_factory):
    """A query table of the pairs run's first 4 test captions (id, tokens)."""
    from scalable_xmr.data.paired import open_paired_dataset

    split = open_paired_dataset(branch_run[1]).read_split("test")
    tokens = [t[:n].tolist() for t, n in zip(split.tokens[:4], split.lengths[:4], strict=True)]
    path = tmp_path_factory.mktemp("captions") / "q.parquet"
    pq.write_table(pa.table({"id": list(split.caption_ids[:4]),
                             "tokens": pa.array(tokens, pa.list_(pa.int32()))}), path)
    return str(path)


def test_cli_mmca_search_says_which_ranking_ran(branch_run, caption_queries, capsys):
    argv = ["search", "--run", branch_run[0], "--model", "mmca", "--query-modality", "text",
            "--query-table", caption_queries, "--target", "image", "--k", "3"]
    assert main(argv) == 0
    assert "4 queries in" in (out := capsys.readouterr().out)
    assert "exact (MMCA full S of every item: 12 cross-attention passes per query)" in out
    assert main([*argv, "--depth", "5"]) == 0
    assert ("two-stage, approximate (top 5 of 12 by i0·c0, re-scored with the full S: 5 cross-attention "
            "passes per query)") in capsys.readouterr().out


@pytest.mark.parametrize("model, depth, message", [
    ("mmca", "2", "--depth: must be an integer from k = 3 to the gallery size 12, got 2"),
    ("mmca", "0", "--depth: must be an integer from k = 3 to the gallery size 12, got 0"),
    ("mmca", "13", "--depth: must be an integer from k = 3 to the gallery size 12, got 13"),
    ("vse", "5", "--depth: only MMCA runs have a two-stage search; a vse search is exact"),
])
def test_cli_bad_depth_is_one_line_and_writes_nothing(branch_run, caption_queries, capsys, tmp_path, model,
                                                      depth, message):
    out = tmp_path / "r.parquet"
    fails_one_line(main, capsys, ["search", "--run", branch_run[0], "--model", model, "--query-modality",
                                  "text", "--query-table", caption_queries, "--target", "image", "--k", "3",
                                  "--depth", depth, "--out", str(out)], message)
    assert not out.exists()


def test_cli_depth_on_an_sdml_run_is_one_line(sdml_run, text_queries, capsys):
    fails_one_line(main, capsys, ["search", "--run", sdml_run, "--query-modality", "text", "--query-table",
                                  text_queries[0], "--target", "image", "--depth", "10"],
                   "--depth: only MMCA runs have a two-stage search; an SDML search is exact "
                   "(got --depth 10)")
