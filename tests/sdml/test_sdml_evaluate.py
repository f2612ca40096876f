"""sdml.evaluate (mAP@k settings in metrics.json) and the run's plots (precision-scope scopes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval import scope_levels
from scalable_xmr.sdml import evaluate
from scalable_xmr.sdml.job import make_plots
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking import plots


def _emb(n: int, seed: int, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.array([f"x{i}" for i in range(n)])
    return ids, rng.integers(0, n_classes, n), rng.normal(size=(n, 4)).astype(np.float32)


def test_pair_maps_and_metrics_record_the_no_relevant_mode():
    # query "a" (one item, class 0) against gallery "b" (classes 1, 1, 0; ranked by cosine)
    emb = {"a": (np.array(["q"]), np.array([0]), np.array([[1.0, 0.0]])),
           "b": (np.array(["g0", "g1", "g2"]), np.array([1, 1, 0]),
                 np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))}
    # "a" ranks b's g0, g1, g2: its relevant g2 sits at rank 3, outside the top 2;
    # "b"'s queries: g2 (class 0) finds "a"'s item at rank 1 (AP 1), g0 and g1 have nothing.
    zero = evaluate.pair_maps(emb, [("a", "b"), ("b", "a")], top_k=2)
    skip = evaluate.pair_maps(emb, [("a", "b"), ("b", "a")], top_k=2, no_relevant="skip")
    assert zero == pytest.approx({"a-b": 0.0, "b-a": 1 / 3})
    assert np.isnan(skip["a-b"]) and skip["b-a"] == pytest.approx(1.0)
    metrics = evaluate.build_metrics({"a-b": 0.5, "b-a": 0.5}, ["a", "b"], zero, 2, no_relevant="zero")
    assert metrics.to_json()["map_at_k"] == {"k": 2, "no_relevant": "zero", **zero}
    assert metrics.stored_maps_at_k(2, "zero") == zero
    assert metrics.stored_maps_at_k(2, "skip") == {}  # other mode: recompute
    assert metrics.stored_maps_at_k(3, "zero") == {}  # other k: recompute
    old_file = {"modalities": ["a", "b"], "map": {"a-b": 0.5, "b-a": 0.5}, "map_mean": 0.5,
                "map_at_k": {"k": 2, "a-b": 0.1}}  # written before no_relevant existed: "zero"
    assert evaluate.SDMLMetrics.from_json(old_file, "m.json").stored_maps_at_k(2, "zero") == {"a-b": 0.1}
    with pytest.raises(InputError, match="no_relevant must be one of zero, skip, got 'all'"):
        evaluate.build_metrics({"a-b": 0.5, "b-a": 0.5}, ["a", "b"], zero, 2, no_relevant="all")


def test_precision_scope_plot_uses_the_papers_scopes(tmp_path, monkeypatch):
    emb = {"image": _emb(1500, 0), "text": _emb(250, 1), "3d": _emb(40, 2)}
    seen = {}
    real_curves = plots.curves

    def spy(data, path, *args, **kwargs):
        seen[path.name] = {pair: x.tolist() for pair, (x, _) in data.items()}
        return real_curves(data, path, *args, **kwargs)

    monkeypatch.setattr(plots, "curves", spy)
    maps = {evaluate.pair_key(q, t): 0.5 for q, t in evaluate.all_pairs(list(emb))}
    metrics = evaluate.build_metrics(maps, list(emb))
    paths = make_plots(SimpleNamespace(plots_dir=tmp_path), metrics, emb)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    scopes = seen["precision_scope.png"]
    # K from 1 to each target gallery's size, with SDML Fig. 2-4's K = 100..1000 that fit it
    # (functional.retrieval.scope_levels: 1500 -> all ten; 250 -> 100, 200; 40 -> none)
    assert scopes[("text", "image")] == list(scope_levels(1500))
    assert set(range(100, 1001, 100)) <= set(scopes[("text", "image")])
    assert scopes[("image", "text")] == list(scope_levels(250)) == scopes[("3d", "text")]
    assert {100, 200} <= set(scopes[("image", "text")]) and scopes[("image", "text")][-1] == 250
    assert scopes[("image", "3d")] == list(scope_levels(40)) and scopes[("image", "3d")][0] == 1


# metrics.json exactly as xmr train writes it (SDMLMetrics.to_json), mAP@k included.
METRICS_JSON = """{
  "modalities": ["image", "text", "audio"],
  "map": {"image-text": 0.61, "image-audio": 0.42, "text-image": 0.6, "text-audio": 0.4,
          "audio-image": 0.39, "audio-text": 0.38},
  "map_mean": 0.4666666666666666,
  "updated": "2026-11-02T10:00:00+00:00",
  "map_at_k": {"k": 50, "no_relevant": "zero", "image-text": 0.7, "image-audio": 0.5,
               "text-image": 0.69, "text-audio": 0.49, "audio-image": 0.48, "audio-text": 0.47},
  "n_test": {"image": 500, "text": 500, "audio": 100}
}"""


def test_a_metrics_json_as_written_reads_back_and_round_trips(tmp_path):
    store = RunStore(tmp_path)
    store.metrics_path.write_text(METRICS_JSON)
    metrics = evaluate.SDMLMetrics.read(store)
    assert metrics.modalities == ["image", "text", "audio"] and metrics.map["audio-text"] == 0.38
    assert (metrics.map_at_k.k, metrics.map_at_k.no_relevant) == (50, "zero")
    assert metrics.map_at_k.maps["text-image"] == 0.69
    assert metrics.n_test == {"image": 500, "text": 500, "audio": 100}
    assert metrics.to_json() == json.loads(METRICS_JSON)  # same keys, same values, same order
    assert list(metrics.to_json()) == list(json.loads(METRICS_JSON))
    metrics.write(store)
    assert evaluate.SDMLMetrics.read(store) == metrics
    assert "mean mAP over 6 ordered pairs: 0.4667" in evaluate.map_table(metrics)


def test_a_run_of_one_modality_and_no_metrics_yet(tmp_path):
    store = RunStore(tmp_path)
    assert evaluate.SDMLMetrics.read(store) is None  # before the first evaluation
    one = evaluate.build_metrics({}, ["image"])
    one.write(store)
    back = evaluate.SDMLMetrics.read(store)
    assert back.map == {} and np.isnan(back.map_mean) and back.map_at_k is None


@pytest.mark.parametrize("content, match", [
    ([1], "not an SDML metrics.json"),
    ({"modalities": [], "map": {}}, "missing key 'map_mean'"),
    ({"modalities": [], "map": {}, "map_mean": 0.0, "colour": 1}, "unknown key 'colour'"),
    ({"modalities": [], "map": {}, "map_mean": 0.0, "map_at_k": {"no_relevant": "zero"}},
     "map_at_k must be an object with an integer 'k'"),
])
def test_a_foreign_metrics_json_is_refused_naming_the_file(tmp_path, content, match):
    store = RunStore(tmp_path)
    store.metrics_path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=match) as e:
        evaluate.SDMLMetrics.read(store)
    assert str(store.metrics_path) in str(e.value)
