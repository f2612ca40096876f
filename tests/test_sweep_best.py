"""sweep_best.py: best.json as xmr sweep writes it reads back (SDML and branch), round trips, and
a file that is not one is refused naming it."""

from __future__ import annotations

import json

import pytest

from scalable_xmr.errors import InputError
from scalable_xmr.sweep_best import SweepBest

SWEEP = {"sweep": "s1", "metric": "best_anchor_map", "mode": "max", "epochs": 4, "n_trials": 6,
         "created": "2026-11-02T10:00:00+00:00"}
# Literally as tuning/sweep.py writes them (the backends' sections, then the sweep's keys).
SDML_BEST = {"model": "sdml", "dataset": {"uri": "/data/x", "name": "x", "n_classes": 20},
             "projection": {"file": "projection.arrow", "sha256": "ab"},
             "schedule": {"trials": "4 epochs", "final": "200 epochs"},
             "per_modality": {"image": {"config": {"hidden": 1024, "batch_size": 100, "normalize": True,
                                                   "lam": 0.3, "lr": 1e-4},
                                        "trial_id": "t1", "anchor_map": 0.5, "val_label_loss": 0.9,
                                        "best_epoch": 3, "epochs_trained": 4, "trial_dir": "/s/trials/t1"}},
             "cross_modal": {"label": "test", "note": "one modality: no cross-modal pair to score"},
             **SWEEP}
BRANCH_BEST = {"model": "mtfn", "config": {"lr": 1e-3, "margin": 0.3, "rank": 7},
               "dataset": {"uri": "/data/p"}, "schedule": {"trials": "2 epochs", "final": "50 epochs"},
               "trial_id": "t2", "trial_dir": "/s/trials/t2", "val": {"rsum": 100.0},
               "rerank": {"k_i2t": 3, "k_t2i": 5, "k_text": 2, "t2i_groups": "candidate", "rsum": 110.0,
                          "rsum_plain": 100.0, "split": "val"},
               "test": {"label": "test", "plain": {"rsum": 90.0}}, **{**SWEEP, "epochs": None}}


@pytest.mark.parametrize("written", [SDML_BEST, BRANCH_BEST], ids=["sdml", "branch"])
def test_best_json_as_written_reads_back_and_round_trips(tmp_path, written):
    (tmp_path / "best.json").write_text(json.dumps(written, indent=2))
    best = SweepBest.read(tmp_path / "best.json")
    assert best.model == written["model"] and best.dataset == written["dataset"]
    assert best.to_json() == written  # the same keys and values ("epochs": null kept)
    best.write(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "best.json").read_text()) == written


def test_the_sections_of_each_family():
    sdml = SweepBest.from_json(SDML_BEST, "best.json")
    assert sdml.per_modality["image"]["config"]["lam"] == 0.3 and sdml.config is None
    branch = SweepBest.from_json(BRANCH_BEST, "best.json")
    assert branch.config == {"lr": 1e-3, "margin": 0.3, "rank": 7} and branch.per_modality is None
    # an older best.json: keys this version does not know are ignored, the configuration is read
    old = SweepBest.from_json({"model": "vse", "config": {"lr": 1e-4}, "k": 5}, "best.json")
    assert old.config == {"lr": 1e-4} and "k" not in old.to_json()


@pytest.mark.parametrize("content, match", [
    ([1, 2], r"--config b.json: not a best.json of `xmr sweep` \(model None\)"),
    ({"config": {}}, r"not a best.json of `xmr sweep` \(model None\)"),
    ({"model": "sdml", "per_modality": [1]}, "'per_modality' must be an object, got \\[1\\]"),
    ({"model": "vse", "config": "lr=1"}, "'config' must be an object, got 'lr=1'"),
])
def test_a_file_that_is_not_a_best_json_is_refused(tmp_path, content, match):
    (tmp_path / "b.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match=match):
        SweepBest.read(tmp_path / "b.json", "--config b.json")
