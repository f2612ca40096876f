"""VSA-AE-MMD on its target domain (paper Table 1): R@K on the target's test and val splits in
result.json, metrics.json, the printed table and MLflow, recomputed from the stored target sims
with the loop reference; a --target without scorable test pairs is refused before training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from reference import recall_at_k_loop
from toy_pairs import without_captions

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.job import BranchRequest, check_dataset
from scalable_xmr.branch.member import BranchSpec, train_branch
from scalable_xmr.branch.member_scores import sims_path
from scalable_xmr.branch.report import evaluate_ensemble, log_members, rk_metrics, rk_table
from scalable_xmr.cli.branch import main
from scalable_xmr.data.paired import make_synthetic_pairs
from scalable_xmr.errors import InputError
from scalable_xmr.store.meta import RunMeta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_VSA = {"embed_dim": 8, "word_dim": 4, "conv_channels": (4, 8), "max_len": 16}
SHAPE = dict(n_regions=3, dim=8, n_concepts=6)  # source and target alike (image arrays must match)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("target")
    src = make_synthetic_pairs(root / "src", seed=1, n_train=20, n_val=6, n_test=6, vocab_size=40, **SHAPE)
    # its own vocabulary (45 words, remapped to the source's) and 5 test / 4 val images x 5 captions
    target = make_synthetic_pairs(root / "target", seed=2, n_train=7, n_val=4, n_test=5, vocab_size=45,
                                  **SHAPE)
    return src, target


def _train(out, src, target, seed=0):
    cfg = PairTrainerConfig(model="vsa", epochs=2, batch_size=16, lr=1e-3, seed=seed)
    return train_branch(BranchSpec(out_dir=str(out), dataset_uri=str(src), trainer=cfg, model_config=TINY_VSA,
                                  target_uri=str(target), ks=(1, 2), name=f"vsa-seed{seed}"))


@pytest.fixture(scope="module")
def members(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [_train(root / f"vsa-seed{s}", *data, seed=s) for s in (0, 1)]


def test_target_recall_equals_the_loop_reference_on_the_stored_sims(members):
    result = members[0]
    assert result.target["splits"] == {"test": {"images": 5, "captions_per_image": 5},
                                       "val": {"images": 4, "captions_per_image": 5}}
    for split, n_img in (("test", 5), ("val", 4)):
        sim = np.load(sims_path(result.out_dir, f"target_{split}"))
        assert sim.shape == (n_img, 5 * n_img)
        expected = recall_at_k_loop(sim, 5)
        assert result.target[split] == pytest.approx(expected), split
        assert {"i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr", "rsum"} <= set(result.target[split])
    saved = json.loads((Path(result.out_dir) / "result.json").read_text())
    assert saved["target"] == json.loads(json.dumps(result.target))
    # the source figures are still the source's (selection and re-ranking K on the source val split)
    source_test = np.load(sims_path(result.out_dir, "test"))
    assert result.test["plain"] == pytest.approx(recall_at_k_loop(source_test, 5))


class _Tracker:
    """Records what log_members sends to MLflow."""

    def __init__(self):
        self.metrics: dict[str, dict[str, float]] = {}

    def start_run(self, name, parent_id=None, tags=None):
        self.metrics[name] = {}
        return name

    def log_params(self, run, params):
        pass

    def log_metric_rows(self, run, rows):
        self.metrics[run].update({k: v for k, v, _ in rows})

    def log_metrics(self, run, metrics):
        self.metrics.setdefault(run, {}).update(metrics)

    def end_run(self, run):
        pass


def _meta(src, target, members):
    splits = {s: {"images": n, "captions": 5 * n, "captions_per_image": 5} for s, n in
              (("train", 20), ("val", 6), ("test", 6))}
    return RunMeta(kind="branch", dataset={"uri": str(src), "splits": splits}, target=str(target),
                   models=["vsa"], ensemble=len(members),
                   rerank={"ks": [1, 2], "k_texts": None, "t2i_groups": "candidate"},
                   members={r.name: {"status": "finished"} for r in members})


def test_metrics_table_and_mlflow_carry_the_target_figures(data, members, tmp_path):
    dirs = [r.out_dir for r in members]
    ens = evaluate_ensemble("vsa", dirs, str(tmp_path / "vsa"), (5, 5), ks=(1, 2),
                            target_splits=members[0].target["splits"])
    ens["members"] = [r.name for r in members]
    results = {r.name: r for r in members}
    metrics = rk_metrics(_meta(*data, members), results, {"vsa": ens})
    assert metrics.target["dataset"] == str(data[1]) and "source val" in metrics.target["selected_on"]
    for r in members:
        assert metrics.models[r.name]["target"] == {"test": r.target["test"], "val": r.target["val"]}
    # the ensemble: the mean of the members' target sims (VSA ranks by cosines), stored and scored
    for split in ("test", "val"):
        mean = np.mean([np.load(sims_path(d, f"target_{split}")).astype(np.float64) for d in dirs], axis=0)
        stored = np.load(sims_path(tmp_path / "vsa", f"target_{split}"))
        np.testing.assert_allclose(stored, mean, rtol=1e-6)
        assert metrics.ensembles["vsa"]["target"][split] == pytest.approx(recall_at_k_loop(stored, 5))
    table = rk_table(metrics)
    assert "R@K on the TARGET domain's test split" in table and "selected on the source val split" in table
    target_part = table[table.index("TARGET domain's test"):]
    row = next(line for line in target_part.splitlines() if line.startswith("vsa-seed0 "))
    expected = members[0].target["test"]
    assert row.split()[1:] == [f"{expected[k]:.1f}" for k in (
        "i2t@1", "i2t@5", "i2t@10", "i2t_medr", "i2t_meanr", "t2i@1", "t2i@5", "t2i@10", "t2i_medr",
        "t2i_meanr", "rsum")]
    tracker = _Tracker()
    log_members(tracker, "parent", _meta(*data, members), metrics, results)
    child = tracker.metrics["vsa-seed0"]
    assert child["target_recall/i2t_1"] == expected["i2t@1"] and child["target_rsum"] == expected["rsum"]
    assert child["target_recall/t2i_meanr"] == expected["t2i_meanr"]
    assert child["target_val_recall/t2i_10"] == members[0].target["val"]["t2i@10"]
    assert child["rsum"] == members[0].test["plain"]["rsum"]  # the source figures keep their names
    assert tracker.metrics["vsa-ensemble"]["target_rsum"] == ens["target"]["test"]["rsum"]
    assert tracker.metrics["parent"]["vsa-seed1/target_rsum"] == members[1].target["test"]["rsum"]
    assert all(re.fullmatch(r"[/\w.\- :]*", k) for run in tracker.metrics.values() for k in run)


def test_without_a_target_nothing_target_is_reported(data, tmp_path):
    cfg = PairTrainerConfig(model="vsa", epochs=1, batch_size=16, lr=1e-3)
    result = train_branch(BranchSpec(out_dir=str(tmp_path / "m"), dataset_uri=str(data[0]), trainer=cfg,
                                    model_config=TINY_VSA, ks=(1,)))
    assert result.target is None and not sims_path(tmp_path / "m", "target_test").exists()
    meta = _meta(data[0], None, [result])
    metrics = rk_metrics(meta, {"vsa": result}, {})
    assert metrics.target is None and "target" not in metrics.to_json()
    assert "target" not in metrics.models["vsa"]
    assert "TARGET" not in rk_table(metrics)


def _no_test(root):
    return make_synthetic_pairs(root / "t", seed=3, n_train=7, n_val=0, n_test=0, vocab_size=45, **SHAPE)


def _no_test_captions(root):
    return without_captions(make_synthetic_pairs(root / "t", seed=3, n_train=7, n_val=0, n_test=4,
                                                 vocab_size=45, **SHAPE), "test")


def _no_val_captions(root):
    return without_captions(make_synthetic_pairs(root / "t", seed=3, n_train=7, n_val=3, n_test=4,
                                                 vocab_size=45, **SHAPE), "val")


@pytest.mark.parametrize("make, match", [
    (_no_test, r"--target .*/t: no 'test' split \(it has \['train'\]\); target-domain R@K"),
    (_no_test_captions, r"--target .*/t: split 'test' has 4 images and no captions"),
    (_no_val_captions, r"--target .*/t: split 'val' has 3 images and no captions"),
])
def test_a_target_without_test_pairs_is_refused_at_the_door(data, tmp_path, capsys, make, match):
    target = make(tmp_path)
    req = BranchRequest(run_dir=str(tmp_path / "run"), dataset_uri=str(data[0]), target_uri=str(target),
                       trainers={"vsa": PairTrainerConfig(model="vsa")})
    with pytest.raises(InputError, match=match):
        check_dataset(req)
    rc = main(["--data", str(data[0]), "--run", str(tmp_path / "run"), "--model", "vsa", "--target",
               str(target), "--no-tracking", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and re.search(match, err[0]), err
    assert not (tmp_path / "run").exists()
