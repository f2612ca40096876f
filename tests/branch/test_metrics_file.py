"""branch/metrics_file.py: metrics.json of a branch-model run, read back as written, old runs included."""

from __future__ import annotations

import json

import pytest

from scalable_xmr.branch.metrics_file import BranchMetrics
from scalable_xmr.branch.report import rk_table
from scalable_xmr.errors import InputError
from scalable_xmr.store.run_store import RunStore

RK = {"i2t@1": 10.0, "i2t@5": 30.0, "i2t@10": 40.0, "i2t_medr": 14.0, "i2t_meanr": 20.5,
      "t2i@1": 8.0, "t2i@5": 25.0, "t2i@10": 35.0, "t2i_medr": 17.0, "t2i_meanr": 22.5, "rsum": 148.0}
GRID = {"i2t": [{"k": 1, "i2t@1": 10.0}], "t2i": [{"k": 1, "k_text": 0, "t2i@1": 8.0}]}


def _entry(**extra) -> dict:
    return {"plain": RK, "rerank": {**RK, "rsum": 150.0}, "choice": {"k_i2t": 1, "k_t2i": 1, "k_text": 0},
            "t2i_groups": "candidate", "val": {"i2t@1": 9.0}, "val_grid": GRID, **extra}


# metrics.json exactly as `xmr train-pairs` up to 0.1.0 wrote it: kind "pairs", an ensemble of two.
OLD = {"kind": "pairs", "dataset": "/data/pairs",
       "test": {"images": 100, "captions_per_image": 5, "protocol": "all test images"},
       "models": {f"vse-seed{s}": _entry(model="vse", seed=s, best_epoch={"image_text": 2, "text_text": None},
                                         text_sim="cosine") for s in (0, 1)},
       "ensembles": {"vse": _entry(members=["vse-seed0", "vse-seed1"], score="mean of the members' scores")}}


def test_an_old_pairs_metrics_json_reads_as_a_branch_run_and_round_trips(tmp_path):
    store = RunStore(tmp_path)
    store.metrics_path.write_text(json.dumps(OLD, indent=2))
    metrics = BranchMetrics.read(store)
    assert metrics.dataset == "/data/pairs" and metrics.target is None
    assert [label for label, _ in metrics.entries()] == ["vse-seed0", "vse-seed1", "vse ensemble x2"]
    assert "vse ensemble x2" in rk_table(metrics)
    assert metrics.to_json() == {**OLD, "kind": "branch"}  # the same keys; the kind as it is now called
    metrics.write(store)
    assert BranchMetrics.read(store) == metrics
    assert json.loads(store.metrics_path.read_text())["kind"] == "branch"


def test_a_target_block_round_trips(tmp_path):
    target = {"dataset": "/data/target", "splits": {"test": {"images": 5, "captions_per_image": 5}},
              "protocol": "plain", "selected_on": "the source val split"}
    metrics = BranchMetrics.from_json({**OLD, "kind": "branch", "target": target}, "m.json")
    assert metrics.target == target and metrics.to_json()["target"] == target
    assert BranchMetrics.read(RunStore(tmp_path)) is None  # no metrics.json yet


@pytest.mark.parametrize("content, match", [
    ({**OLD, "kind": "sdml"}, "not the metrics.json of a branch-model run \\(kind 'sdml'\\)"),
    ({"modalities": [], "map": {}, "map_mean": 0.0}, "not the metrics.json of a branch-model run"),
    ({**OLD, "colour": 1}, "unknown key 'colour'"),
    ({k: v for k, v in OLD.items() if k != "ensembles"}, "missing key 'ensembles'"),
])
def test_a_foreign_metrics_json_is_refused_naming_the_file(tmp_path, content, match):
    store = RunStore(tmp_path)
    store.metrics_path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=match) as e:
        BranchMetrics.read(store)
    assert str(store.metrics_path) in str(e.value)
