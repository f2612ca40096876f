"""``xmr serve``'s HTTP routes in-process (FastAPI TestClient, no Ray): every model kind answers
what a brute-force ranking with the model's own scoring answers, and no request -- arbitrary JSON
documents or arbitrary bytes (hypothesis) -- gets a 5xx or a non-JSON body, or changes a later
answer. The same routes run under Ray Serve in tests/e2e/test_index_search_serve.py."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalable_xmr.branch.model_file import load_branch_model
from scalable_xmr.branch.scoring import similarity_matrix
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.serving import load_run
from scalable_xmr.serving.http import searcher_app
from scalable_xmr.serving.service import Searcher

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clients(sdml_run, branch_run, vsa_run):
    """A TestClient per model kind, over the stored test splits."""
    out = {"sdml": TestClient(searcher_app(Searcher(sdml_run)))}
    for model in ("vse", "mmca", "mtfn"):
        out[model] = TestClient(searcher_app(Searcher(branch_run[0], model=model)))
    out["vsa"] = TestClient(searcher_app(Searcher(vsa_run)))
    return out


def post(client, body) -> tuple[int, object]:
    r = client.post("/search", content=json.dumps(body))
    return r.status_code, r.json()


def _branch_reference(run_dir: str, data: str, model: str) -> np.ndarray:
    """(images, captions) scores of the test split by the evaluator (the model's own scoring)."""
    import torch

    net, _ = load_branch_model(f"{run_dir}/models/{model}/model.pt", torch.device("cpu"))
    return similarity_matrix(net.eval(), open_paired_dataset(data).read_split("test"), chunk=5).numpy()


def _assert_top(hits: list[dict], ref_row: np.ndarray, ids: list[str]) -> None:
    """The hits are the reference's top of this row (scores equal; none better left out)."""
    pos = {i: n for n, i in enumerate(ids)}
    rows = [pos[h["id"]] for h in hits]
    np.testing.assert_allclose([h["score"] for h in hits], ref_row[rows], atol=1e-4)
    assert np.delete(ref_row, rows).max() <= hits[-1]["score"] + 1e-4


@pytest.mark.parametrize("model", ["vse", "vsa", "mmca", "mtfn"])
def test_branch_runs_answer_the_brute_force_top(clients, branch_run, vsa_run, model):
    run_dir = vsa_run if model == "vsa" else branch_run[0]
    split = open_paired_dataset(branch_run[1]).read_split("test")
    ref = _branch_reference(run_dir, branch_run[1], model)
    caps, imgs = list(split.caption_ids), list(split.image_ids)
    for q in range(3):  # image -> text, by id and by features
        for query in ({"id": imgs[q]}, {"features": split.images[q].tolist()}):
            status, answer = post(clients[model], {"query_modality": "image", "target_modality": "text",
                                                   "k": 5, **query})
            assert status == 200, answer
            _assert_top(answer["hits"], ref[q], caps)
            assert answer["mode"].startswith("exact") and answer["gallery"] == "text stored test split"
    for q in range(4):  # text -> image, by id, by token ids and by the caption's words
        tokens = split.tokens[q, : split.lengths[q]].tolist()
        words = " ".join(open_paired_dataset(branch_run[1]).vocab[t] for t in tokens)
        for query in ({"id": caps[q]}, {"tokens": tokens}, {"text": words.upper()}):
            status, answer = post(clients[model], {"query_modality": "text", "target_modality": "image",
                                                   "k": 4, **query})
            assert status == 200, answer
            _assert_top(answer["hits"], ref[:, q], imgs)


def test_mmca_depth_is_a_request_field(clients):
    body = {"query_modality": "text", "target_modality": "image", "k": 3, "tokens": [2, 3, 4]}
    exact = post(clients["mmca"], body)[1]
    staged = post(clients["mmca"], {**body, "depth": 12})[1]
    assert staged["mode"].startswith("two-stage, approximate (top 12 of 12")
    assert [h["id"] for h in staged["hits"]] == [h["id"] for h in exact["hits"]]


def test_sdml_answers_the_cosine_top_of_the_stored_gallery(clients, sdml_run):
    run = load_run(sdml_run)
    t_ids, _, t_emb = run.embeddings("text")
    i_ids, _, i_emb = run.embeddings("image")
    for q in range(3):
        status, answer = post(clients["sdml"], {"query_modality": "text", "target_modality": "image",
                                                "id": str(t_ids[q]), "k": 5})
        assert status == 200
        ref = i_emb.astype(np.float64) @ t_emb[q].astype(np.float64)
        _assert_top(answer["hits"], ref, [str(i) for i in i_ids])


def test_modalities_say_what_each_accepts(clients):
    sdml = clients["sdml"].get("/modalities").json()
    assert sdml["image"]["accepts"]["features"] == "64 numbers"
    assert sdml["image"]["searches"] == ["audio", "image", "text"]
    vse = clients["vse"].get("/modalities").json()
    assert set(vse["text"]["accepts"]) == {"id", "text", "tokens"} and vse["text"]["searches"] == ["image"]
    assert vse["image"]["gallery_size"] == 12 and vse["text"]["gallery_size"] == 60


@pytest.mark.parametrize("model, body, status, message", [
    ("vse", {"text": "zebra xylophone"}, 400,
     "text: no word of 'zebra xylophone' is in the run's vocabulary"),
    ("vse", {"text": ""}, 400, "text: the caption has no words"),
    ("vse", {"text": " ,"}, 400, "text: no word of ' ,' is in the run's vocabulary"),
    ("vse", {"tokens": [1, 40]}, 400, "tokens: ids must be in 1..39 (the run's vocabulary), got 40"),
    ("vse", {"tokens": [0]}, 400, "tokens: ids must be in 1..39"),
    ("vse", {"tokens": []}, 400, "tokens: List should have at least 1 item"),
    ("vse", {"id": "img000040"}, 400, "id: 'img000040' is not a stored 'text' test item (it is a stored "
                                      "'image' item)"),
    ("vse", {"target_modality": "text", "tokens": [2]}, 400,
     "target_modality: a vse run searches image<->text, got 'text' -> 'text'"),
    ("vse", {"features": [0.5] * 8}, 400, "features: 'text' queries of this run are captions"),
    ("mmca", {"tokens": [2], "depth": 2}, 400, "depth: must be an integer from k = 3 to the gallery size 12"),
    ("sdml", {"query_modality": "image", "features": [3e38] * 64}, 400, "the 'image' encoding of the query "
                                                                         "is not finite"),
    ("sdml", {"query_modality": "image", "features": [[0.5] * 64]}, 400, "features: one flat list of 64"),
    ("sdml", {"query_modality": "smell", "features": [0.5]}, 400, "query_modality: unknown modality 'smell'"),
    ("sdml", {"query_modality": "image", "tokens": [1]}, 400, "tokens: 'image' queries of this run take"),
    ("sdml", {"query_modality": "image", "features": [0.5] * 64, "k": 31}, 400,
     "k: must be an integer from 1 to the gallery size 30, got 31"),
    ("sdml", {"query_modality": "image", "features": [0.5] * 64, "k": 2.5}, 400,
     "k: Input should be a valid integer"),
    ("sdml", {"query_modality": "image", "features": [0.5] * 64, "id": "x"}, 400,
     "give exactly one of features, id, text, tokens (got features, id)"),
    ("sdml", {"query_modality": "image"}, 400, "give exactly one of features, id, text, tokens (got none)"),
])
def test_bad_requests_are_4xx_json_naming_the_field(clients, model, body, status, message):
    base = {"query_modality": "text", "target_modality": "image", "k": 3}
    got, answer = post(clients[model], {**base, **body})
    assert got == status and message in answer["error"], answer


@pytest.mark.parametrize("method, path, status, message", [
    ("get", "/search", 405, "method: GET not allowed on /search"),
    ("post", "/healthz", 405, "method: POST not allowed on /healthz"),
    ("get", "/nope", 404, "path: no endpoint '/nope'"),
])
def test_unknown_routes_are_json(clients, method, path, status, message):
    r = getattr(clients["sdml"], method)(path)
    assert r.status_code == status and message in r.json()["error"]


# ---- no request gets a 5xx -------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
FIELDS = ("query_modality", "target_modality", "k", "features", "id", "text", "tokens", "depth")
NEAR = st.fixed_dictionaries({}, optional={  # documents shaped like requests, with any values
    "query_modality": st.sampled_from(["image", "text", "audio", "smell"]) | JSON,
    "target_modality": st.sampled_from(["image", "text", "audio"]) | JSON,
    "k": st.integers(-3, 100) | JSON,
    "features": st.lists(st.floats(width=32), min_size=0, max_size=70) | JSON,
    "id": st.sampled_from(["img000040", "img000040#0", "x"]) | JSON,
    "text": st.text(max_size=30) | st.sampled_from(["c0_1 c1_2", "", "c0_0"]),
    "tokens": st.lists(st.integers(-2, 45), max_size=6) | JSON,
    "depth": st.integers(-1, 70) | JSON,
}) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON, max_size=6)
GOOD = {"sdml": {"query_modality": "text", "target_modality": "image", "k": 3, "features": [0.25] * 80},
        "vse": {"query_modality": "text", "target_modality": "image", "k": 3, "text": "c0_1 c1_2"},
        "mmca": {"query_modality": "image", "target_modality": "text", "k": 3, "features": [0.5] * 8},
        "mtfn": {"query_modality": "text", "target_modality": "image", "k": 3, "tokens": [2, 5, 9]}}


def _answer_is_sound(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    body = response.json()  # always JSON
    if response.status_code >= 400:
        assert isinstance(body.get("error"), str) and body["error"], body


@pytest.fixture(scope="module")
def good_answers(clients):
    return {m: post(clients[m], body) for m, body in GOOD.items()}


@pytest.mark.parametrize("model", list(GOOD))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=NEAR | JSON)
def test_arbitrary_json_gets_no_5xx(clients, good_answers, model, doc):
    _answer_is_sound(clients[model].post("/search", content=json.dumps(doc, allow_nan=True)))
    assert post(clients[model], GOOD[model]) == good_answers[model]


@pytest.mark.parametrize("model", ["sdml", "mmca"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_get_no_5xx(clients, good_answers, model, raw):
    for path in ("/search", "/healthz", "/modalities"):
        _answer_is_sound(clients[model].post(path, content=raw))
    assert post(clients[model], GOOD[model]) == good_answers[model]
