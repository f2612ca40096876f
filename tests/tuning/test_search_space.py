"""Search spaces, --grid/--range parsing, bad input, anchor mAP, result ranking (no Ray trials)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.tuning.results import TrialRow, best_per_group, ranked, top_table
from scalable_xmr.tuning.sdml_trial import anchor_map
from scalable_xmr.tuning.space import Dist, build_space, parse_grid, parse_range
from scalable_xmr.tuning.tracking import mlflow_metrics


# ------------------------------------------------------------------------------ default spaces
def test_default_spaces_follow_the_issue():
    sdml = build_space("sdml")
    assert sdml.tuned() == {"lam": Dist("uniform", low=0.0, high=1.0),
                            "lr": Dist("uniform", low=1e-5, high=1e-3, log=True)}
    assert sdml.in_trial() == {}
    mtfn = build_space("mtfn")
    assert set(mtfn.tuned()) == {"margin", "lr", "rank"}
    assert set(build_space("mmca").tuned()) == {"margin", "lr", "alpha"}
    assert set(build_space("vse").tuned()) == {"margin", "lr"}
    # K and K' are evaluated inside every trial: they never multiply the trials.
    assert mtfn.in_trial() == {"k": (1, 2, 5, 10, 15, 20), "k_text": (0, 1, 2, 4, 8)}
    assert mtfn.n_configurations(num_samples=5) == 5


def test_default_k_grids_are_the_evaluation_grids():
    from scalable_xmr.branch import evaluate as pair_eval

    assert build_space("vse").in_trial() == {"k": pair_eval.K_GRID, "k_text": pair_eval.K_TEXT_GRID}


def test_grid_and_range_parsing():
    assert parse_grid("sdml", "lam=0.1, 0.5,0.1") == ("lam", Dist("grid", (0.1, 0.5)))  # unique
    assert parse_grid("mtfn", "rank=4,8") == ("rank", Dist("grid", (4, 8)))
    assert parse_range("sdml", "lr=1e-5:1e-3:log") == ("lr", Dist("uniform", low=1e-5, high=1e-3, log=True))
    assert parse_range("mtfn", "rank=4:32:log") == ("rank", Dist("int", low=4, high=32, log=True))
    # an in-trial range is every integer in it
    assert parse_range("mtfn", "k=3:6") == ("k", Dist("grid", (3, 4, 5, 6)))


def test_number_of_configurations_counts_grids_samples_and_modalities():
    space = build_space("sdml", grids=["lam=0.1,0.5,0.9", "batch_size=50,100"])
    # 3 lam x 2 batch sizes, 2 samples of lr each, for 3 modalities: 3 * 2 * 2 * 3
    assert space.check_nonempty(num_samples=2, n_groups=3) == 36
    mtfn = build_space("mtfn", grids=["k=5,10,15"], ranges=["rank=2:4"])
    assert mtfn.check_nonempty(num_samples=4) == 4  # K grid and R range add no trials


def test_tune_space_integer_ranges_include_both_ends():
    from ray import tune

    space = build_space("mtfn", ranges=["rank=2:4"], grids=["margin=0.1,0.2"]).tune_space()
    assert space["margin"] == tune.grid_search([0.1, 0.2])
    samples = {space["rank"].sample() for _ in range(300)}
    assert samples == {2, 3, 4}
    lrs = [build_space("sdml").tune_space()["lr"].sample() for _ in range(300)]
    assert 1e-5 <= min(lrs) and max(lrs) <= 1e-3
    assert sum(lr < 1e-4 for lr in lrs) > 60  # log-uniform: half the mass below the geometric mean


@pytest.mark.parametrize(
    ("model", "grids", "ranges", "match"),
    [
        ("sdml", ["lamda=0.1"], [], r"unknown hyperparameter 'lamda' for model sdml; valid: "
                                    r"batch_size, hidden, lam, lr"),
        ("vse", [], ["rank=2:8"], r"unknown hyperparameter 'rank' for model vse; "
                                  r"valid: k, k_text, lr, margin"),
        ("sdml", [], ["lam=0:2"], r"lam \(λ\) must be in \[0, 1\], got '2'"),
        ("sdml", ["lam=-0.5,0.5"], [], r"lam \(λ\) must be in \[0, 1\], got '-0.5'"),
        ("mtfn", ["margin=-0.1"], [], r"margin must be in \[0, inf\), got '-0.1'"),
        ("mtfn", [], ["rank=0:8"], r"rank \(R\) must be in \[1, inf\), got '0'"),
        ("mtfn", ["rank=2.5"], [], r"rank must be an integer, got '2.5'"),
        ("mtfn", ["k=0,5"], [], r"k \(K\) must be in \[1, inf\), got '0'"),
        ("mtfn", ["k_text=-1"], [], r"k_text \(K'\) must be in \[0, inf\)"),
        ("sdml", [], ["lr=0:1e-3:log"], r"lr must be in \(0, inf\), got '0'"),
        ("sdml", [], ["lr=1e-3:1e-5"], r"lo must be below hi"),
        ("sdml", [], ["lr=1e-5-1e-3"], r"expected KEY=lo:hi or KEY=lo:hi:log"),
        ("sdml", ["lam"], [], r"--grid 'lam': expected KEY=v1,v2"),
        ("sdml", ["lam=abc"], [], r"lam must be a number, got 'abc'"),
        ("sdml", ["lam=0.1"], ["lam=0:1"], r"lam is given twice"),
        ("mtfn", [], ["k=2:8:log"], r"drop ':log'"),
        ("bert", [], [], r"--model must be one of sdml, vse, mtfn, mmca, vsa"),
    ],
)
def test_bad_search_space_input(model, grids, ranges, match):
    with pytest.raises(InputError, match=match):
        build_space(model, grids, ranges)


@pytest.mark.parametrize(
    ("grids", "ranges", "num_samples", "n_groups", "match"),
    [
        (["lam="], [], 2, 1, r"zero configurations: lam has an empty grid"),
        ([], ["k=5:3"], 2, 1, r"zero configurations: k has an empty grid"),
        ([], [], 0, 1, r"zero configurations: --num-samples is 0"),
        ([], [], 2, 0, r"zero configurations: no modality selected"),
    ],
)
def test_zero_configurations(grids, ranges, num_samples, n_groups, match):
    model = "mtfn" if any(r.startswith("k=") for r in ranges) else "sdml"
    with pytest.raises(InputError, match=match):
        build_space(model, grids, ranges).check_nonempty(num_samples, n_groups)


# ------------------------------------------------------------------------------ scheduling
def test_grouped_asha_compares_trials_of_one_modality_only():
    from types import SimpleNamespace

    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    from scalable_xmr.tuning.scheduler import GroupedASHA

    kwargs = {"time_attr": "training_iteration", "max_t": 4, "grace_period": 1, "reduction_factor": 2}

    def trial(tid, modality):
        return SimpleNamespace(trial_id=tid, config={"modality": modality})

    def feed(scheduler, trials_scores):
        scheduler.set_search_properties("m", "max")
        decisions = []
        for t, score in trials_scores:
            scheduler.on_trial_add(None, t)
            decisions.append(scheduler.on_trial_result(None, t, {"training_iteration": 1, "m": score}))
        return decisions

    seq = [(trial("a1", "audio"), 0.8), (trial("a2", "audio"), 0.9), (trial("t1", "text"), 0.2),
           (trial("a3", "audio"), 0.1)]
    # Per modality: text's first trial meets an empty rung; audio's third falls below audio's cutoff
    # (the median of 0.8 and 0.9).
    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP
    assert feed(GroupedASHA("modality", **kwargs), seq) == [go, go, go, stop]
    # One ASHA over all trials would stop the text trial for audio's scores.
    assert feed(AsyncHyperBandScheduler(**kwargs), seq)[2] == stop


def test_sdml_trial_resources_pack_small_modalities():
    from scalable_xmr.tuning.sdml_backend import SDMLBackend

    info = {"input_dims": {"image": 4096, "audio": 29}, "cpus_per_trial": 1.0, "gpus_per_trial": 1.0}
    assert SDMLBackend.trial_resources(info) == {"image": {"cpu": 1.0, "gpu": 1.0},
                                                 "audio": {"cpu": 1.0, "gpu": 0.25}}
    cpu_only = {**info, "gpus_per_trial": 0.0, "cpus_per_trial": 2.0}
    assert SDMLBackend.trial_resources(cpu_only) == {"image": {"cpu": 2.0}, "audio": {"cpu": 2.0}}


# ------------------------------------------------------------------------------ CLI bad input
def _cli(argv, capsys):
    from scalable_xmr.cli.sweep import main

    code = main(argv)
    return code, capsys.readouterr().err


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    base = ["--data", str(data), "--storage", str(tmp_path / "sweeps"), "--no-tracking"]
    code, err = _cli(["--model", "sdml", "--grid", "lamda=0.1", *base], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "unknown hyperparameter 'lamda' for model sdml; valid: batch_size, hidden, lam, lr" in err
    code, err = _cli(["--model", "mtfn", "--range", "rank=0:4", *base], capsys)
    assert code == 2 and "rank (R) must be in [1, inf), got '0'" in err
    code, err = _cli(["--model", "sdml", "--num-samples", "0", *base], capsys)
    assert code == 2 and "zero configurations" in err
    code, err = _cli(["--model", "sdml", "--set", "dim", *base], capsys)
    assert code == 2 and "--set 'dim': expected KEY=VALUE" in err
    code, err = _cli(["--model", "sdml", "--set", "lam=0.5", *base], capsys)
    assert code == 2 and "--set lam: lam is swept; to fix it, give it one value with --grid lam=VALUE" in err
    code, err = _cli(["--model", "sdml", "--set", "epochs=5", *base], capsys)
    assert code == 2 and "--set epochs: not settable here; use --epochs" in err
    code, err = _cli(["--model", "sdml", "--metric", "rsum", *base], capsys)
    assert code == 2 and "--metric for sdml must be one of anchor_map, label_loss, got 'rsum'" in err
    code, err = _cli(["--model", "mtfn", "--modality", "image", *base], capsys)
    assert code == 2 and "--modality applies to --model sdml only" in err


def test_resume_with_no_sweep(tmp_path, capsys):
    from scalable_xmr.tuning.sweep import SweepRequest, run_sweep

    with pytest.raises(MissingError, match=r"--resume: no sweep to resume at .*/sweeps/nothing"):
        run_sweep(SweepRequest("sdml", "", storage=str(tmp_path / "sweeps"), name="nothing", resume=True))
    with pytest.raises(MissingError, match=r"--resume: no mtfn sweep to resume in .*/sweeps"):
        run_sweep(SweepRequest("mtfn", "", storage=str(tmp_path / "sweeps"), resume=True))
    code, err = _cli(["--model", "sdml", "--storage", str(tmp_path), "--name", "x", "--resume"], capsys)
    assert code == 2 and "no sweep to resume" in err


def test_a_sweep_name_is_not_reused(tmp_path):
    from scalable_xmr.errors import RunStateError
    from scalable_xmr.tuning.sweep import SweepRequest, run_sweep

    (tmp_path / "sweeps" / "taken").mkdir(parents=True)
    (tmp_path / "sweeps" / "taken" / "sweep.json").write_text("{}")
    with pytest.raises(RunStateError, match=r"taken: already holds a sweep; pass --resume"):
        run_sweep(SweepRequest("sdml", "", storage=str(tmp_path / "sweeps"), name="taken"))
    with pytest.raises(InputError, match=r"--name must be a plain directory name"):
        run_sweep(SweepRequest("sdml", "", storage=str(tmp_path / "sweeps"), name="a/b"))


def test_training_job_refuses_a_best_json_of_another_model(tmp_path):
    from scalable_xmr.cli.train import load_overrides

    path = tmp_path / "best.json"
    path.write_text(json.dumps({"model": "mtfn", "trainer": {"lr": 1e-4}, "model_config": {"rank": 8}}))
    with pytest.raises(InputError, match=r"not an SDML best.json \(model 'mtfn'\)"):
        load_overrides(str(path))


# ------------------------------------------------------------------------------ anchor mAP
def test_anchor_map_by_hand():
    P = np.eye(2, dtype=np.float32)  # anchors e0 (class 0) and e1 (class 1)
    emb = np.array([[0.9, 0.1], [0.8, 0.6], [0.5, 0.5], [0.1, 0.9]], np.float32)
    labels = np.array([[1, 0], [0, 1], [0, 0], [1, 1]], np.float32)
    # row 0: e0 first, relevant -> AP 1; row 1: e0 then e1, relevant e1 at rank 2 -> AP 1/2;
    # row 2 is unlabeled and left out; row 3: both anchors relevant -> AP 1.
    assert anchor_map(emb, labels, P) == pytest.approx((1 + 0.5 + 1) / 3)


def _loop_anchor_map(emb, labels, P):
    aps = []
    for e, y in zip(emb, labels, strict=True):
        if y.sum() == 0:
            continue
        cos = [float(e @ P[:, j]) / (np.linalg.norm(e) * np.linalg.norm(P[:, j])) for j in range(P.shape[1])]
        order = sorted(range(P.shape[1]), key=lambda j: (-cos[j], j))
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if y[j]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / y.sum())
    return float(np.mean(aps))


def test_anchor_map_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    P = np.linalg.qr(rng.standard_normal((8, 8)))[0][:, :5].astype(np.float32)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    labels = (rng.random((40, 5)) < 0.3).astype(np.float32)
    assert anchor_map(emb, labels, P) == pytest.approx(_loop_anchor_map(emb, labels, P), abs=1e-6)
    assert np.isnan(anchor_map(emb[:2], np.zeros((2, 5)), P))


# ------------------------------------------------------------------------------ results
def _rows():
    return [
        TrialRow("t0", {"lam": 0.1}, {"best_anchor_map": 0.30, "training_iteration": 3}, "audio"),
        TrialRow("t1", {"lam": 0.5}, {"best_anchor_map": 0.50, "training_iteration": 3}, "audio"),
        TrialRow("t2", {"lam": 0.9}, {"best_anchor_map": 0.20, "training_iteration": 1}, "text"),
        TrialRow("t3", {"lam": 0.3}, {"best_anchor_map": 0.40, "training_iteration": 3}, "text"),
        TrialRow("t4", {"lam": 0.7}, {"best_anchor_map": 0.90}, "text", error="RayTaskError: boom"),
        TrialRow("t5", {"lam": 0.2}, {"best_anchor_map": float("nan")}, "text"),
    ]


def test_best_per_group_ignores_errors_and_nan():
    best = best_per_group(_rows(), "best_anchor_map", "max")
    assert {g: r.trial_id for g, r in best.items()} == {"audio": "t1", "text": "t3"}
    worst = best_per_group(_rows(), "best_anchor_map", "min")
    assert {g: r.trial_id for g, r in worst.items()} == {"audio": "t0", "text": "t2"}
    assert [r.trial_id for r in ranked(_rows(), "best_anchor_map", "max")] == ["t1", "t3", "t0", "t2"]
    with pytest.raises(InputError, match=r"no usable trial for video .*RayTaskError: boom"):
        best_per_group([*_rows(), TrialRow("t6", {}, {}, "video", error="RayTaskError: boom")],
                       "best_anchor_map", "max")


def test_top_table_lists_each_group_best_first():
    table = top_table(_rows(), "best_anchor_map", "max", ["lam"], n=1)
    lines = table.splitlines()
    assert lines[0] == "| rank | trial | group | lam | best_anchor_map | epochs |"
    assert lines[2] == "| 1 | t1 | audio | 0.5 | 0.5 | 3 |"
    assert lines[3] == "| 1 | t3 | text | 0.3 | 0.4 | 3 |"
    assert "failed: t4 (text) RayTaskError: boom" in table


def test_mlflow_metric_names():
    result = {"loss_train": 1.5, "val_anchor_map": 0.25, "i2t_1": 40.0, "rsum": 300.0,
              "done": True, "training_iteration": 2, "trial_id": "x", "nan": float("nan"),
              "test_rsum": 280.0}  # trials report none; one that did would still not reach MLflow
    assert mlflow_metrics(result) == {"loss/train": 1.5, "map/val_anchor": 0.25,
                                      "recall/i2t_1": 40.0, "rsum": 300.0}


def test_branch_sweep_set_routes_schedule_keys_per_model():
    from scalable_xmr.tuning.branch_backend import split_base

    trainer, model = split_base("mtfn", {"text_epochs": 2, "lr_decay": 0.1, "rank": 4})
    assert trainer == {"text_epochs": 2, "lr_decay": 0.1} and model == {"rank": 4}
    with pytest.raises(InputError, match=r"--set text_epochs: not a schedule key of vse \(schedule keys: "
                       r"epochs, batch_size, lr, lr_decay_epochs, lr_decay; text_epochs is mtfn's\)"):
        split_base("vse", {"text_epochs": 2})
