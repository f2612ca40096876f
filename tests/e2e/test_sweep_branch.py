"""Branch-model sweep (MTFN) on a local Ray: trials, K swept in-trial, MLflow, best.json accepted by
the train-pairs job's --config and refused by the SDML training job."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from scalable_xmr.config import TrackingConfig
from scalable_xmr.io import read_json

pytestmark = pytest.mark.slow

SMALL = {"dim": 8, "word_dim": 8, "text_hidden": 8, "batch_size": 16, "text_epochs": 1}


def _winner_test_sim(summary, winner):
    """(image x caption test scores of the chosen trial's saved model, caption -> image index)."""
    from scalable_xmr.branch.model_file import load_branch_model
    from scalable_xmr.branch.scoring import similarity_matrix
    from scalable_xmr.data.paired import open_paired_dataset

    model, cfg = load_branch_model(Path(summary.sweep_dir) / "trials" / winner.trial_id / "model.pt", "cpu")
    dataset = read_json(Path(summary.sweep_dir) / "sweep.json")["dataset"]["uri"]
    split = open_paired_dataset(dataset).read_split("test")
    return similarity_matrix(model, split, cfg.eval_chunk).numpy(), split.caption_image_index


def _plain_rsum(sim, caption_image) -> float:
    """R@1 + R@5 + R@10 both ways (%) with plain loops; ties ranked by index."""
    i2t = [int(np.flatnonzero(caption_image[np.argsort(-row, kind="stable")] == i)[0])
           for i, row in enumerate(sim)]  # rank of the image's first true caption
    t2i = [int(np.flatnonzero(np.argsort(-sim[:, j], kind="stable") == caption_image[j])[0])
           for j in range(sim.shape[1])]  # rank of the caption's image
    return sum(100.0 * np.mean(np.array(ranks) < k) for ranks in (i2t, t2i) for k in (1, 5, 10))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    from scalable_xmr.data.paired import make_synthetic_pairs

    out = tmp_path_factory.mktemp("pairs") / "syn"
    make_synthetic_pairs(out, seed=0, n_train=40, n_val=10, n_test=10, n_regions=4, dim=16)
    return str(out)


def test_mtfn_sweep_k_in_trial_mlflow_and_best_json(ray_local, pairs, tmp_path):
    from mlflow.tracking import MlflowClient

    from scalable_xmr.cli.branch import build_configs, job_parser
    from scalable_xmr.cli.train import load_overrides
    from scalable_xmr.errors import InputError
    from scalable_xmr.tuning import SweepRequest, run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    req = SweepRequest("mtfn", pairs, storage=str(tmp_path / "sweeps"), name="m", num_samples=1, epochs=2,
                       scheduler="asha", max_concurrent=2, grids=("rank=1,2", "k=1,3,5", "k_text=0,2"),
                       base=SMALL, tracking=TrackingConfig(uri, "pairs-test"), verbose=0)
    summary = run_sweep(req)
    # 2 values of R x 1 sample; the 3 x 2 K grid is evaluated inside each trial, not as trials.
    assert summary.finished and summary.n_trials == 2
    sweep = Path(summary.sweep_dir)  # finished: the trials' training state is gone, their models not
    assert not list(sweep.glob("*/checkpoint_*")) and not list(sweep.rglob("last.pt*"))
    assert sorted(t.config["rank"] for t in summary.trials) == [1, 2]
    for trial in summary.trials:
        assert set(trial.config) == {"rank", "margin", "lr"}
        assert 0.05 <= trial.config["margin"] <= 0.5
    complete = [t for t in summary.trials if "rsum_rerank" in t.metrics]
    assert complete, "ASHA lets at least the best trial of the first rung finish"
    for trial in summary.trials:  # trials select on val: nothing they report is a test figure
        assert not any("test" in k for k in trial.metrics), sorted(trial.metrics)
        result = Path(summary.sweep_dir) / "trials" / trial.trial_id / "result.json"
        assert not result.is_file() or read_json(result)["test"] == {}  # never scored on test
    for trial in complete:
        assert trial.metrics["training_iteration"] == 3  # 2 image-text + 1 text-text epoch
        assert trial.metrics["best_k"] in (1, 3, 5) and trial.metrics["best_k_text"] in (0, 2)
        # K = 1 re-ranks nothing and is in the grid: the chosen K is never worse than plain on val
        assert trial.metrics["rsum_rerank"] >= trial.metrics["rsum_selected"] - 1e-9

    best = read_json(Path(summary.sweep_dir) / "best.json")
    winner = max(complete, key=lambda t: t.metrics["best_rsum"])
    assert best["model"] == "mtfn" and best["trial_id"] == winner.trial_id
    assert best["config"]["rank"] == winner.config["rank"]
    assert best["config"]["lr"] == pytest.approx(winner.config["lr"])
    assert best["config"]["dim"] == 8 and "epochs" not in best["config"] and "k" not in best["config"]
    assert best["rerank"]["k_i2t"] == winner.metrics["best_k"]
    assert best["rerank"]["rsum"] == pytest.approx(winner.metrics["rsum_rerank"])
    # The chosen trial alone is scored on test, once, after the sweep, with its val K / K'.
    test = best["test"]
    assert test["label"] == "test (chosen config, scored once)" and test["trial_id"] == winner.trial_id
    assert test["choice"] == {"k_i2t": winner.metrics["best_k"], "k_t2i": winner.metrics["best_k_t2i"],
                              "k_text": winner.metrics["best_k_text"]}
    assert test["plain"]["rsum"] == pytest.approx(_plain_rsum(*_winner_test_sim(summary, winner)))
    assert summary.test_line.startswith("test (chosen config, scored once): rsum ")
    assert summary.test_line in (Path(summary.sweep_dir) / "summary.md").read_text()

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("pairs-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.run_name for p in parents] == ["sweep:m"] and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    for child in children:
        assert {"rank", "margin", "lr", "base.dim"} <= set(child.data.params)
        assert [m.step for m in client.get_metric_history(child.info.run_id, "rsum_best")][0] == 1
        assert not any("test" in k for k in child.data.metrics), child.data.metrics
    by_trial = {c.data.params["trial_id"]: c for c in children}
    assert by_trial[winner.trial_id].data.metrics["rerank/k_i2t"] == winner.metrics["best_k"]
    assert parents[0].data.metrics["rsum_rerank"] == pytest.approx(best["rerank"]["rsum"])
    assert parents[0].data.metrics["test/rsum"] == pytest.approx(test["plain"]["rsum"])
    assert parents[0].data.metrics["test/rsum_rerank"] == pytest.approx(test["rerank"]["rsum"])
    assert parents[0].data.params["test_figures"] == "test (chosen config, scored once)"

    # train_pairs.py --config best.json takes the winner's values; the SDML job refuses the file.
    args = job_parser().parse_args(["--config", str(Path(summary.sweep_dir) / "best.json"), "--epochs", "1"])
    trainers, model_configs, ks, k_texts = build_configs(args)
    assert list(trainers) == ["mtfn"] and trainers["mtfn"].lr == pytest.approx(winner.config["lr"])
    assert model_configs["mtfn"]["rank"] == winner.config["rank"]
    assert model_configs["mtfn"]["margin"] == pytest.approx(winner.config["margin"])
    assert isinstance(args, argparse.Namespace) and ks is None and k_texts is None
    with pytest.raises(InputError, match=r"not an SDML best.json \(model 'mtfn'\)"):
        load_overrides(str(Path(summary.sweep_dir) / "best.json"))
