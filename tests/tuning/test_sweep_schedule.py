"""Which schedule a sweep's trials ran and which one best.json trains: branch trials run their model's
schedule compressed into --epochs (branch.config.compressed), SDML trials the first --epochs of 200;
the table, summary.md and MLflow say so, and best.json carries no compression into the final
training. Also: the re-ranking line's default T2I groups. Expected texts and rates are written by
hand (docs/models.md gives the rule and the full schedules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalable_xmr.config import SDMLConfig, from_dict
from scalable_xmr.io import read_json
from scalable_xmr.tracking.tracker import Tracker
from scalable_xmr.tuning import branch_backend, sdml_backend
from scalable_xmr.tuning.branch_backend import BranchBackend, rerank_line
from scalable_xmr.tuning.results import TrialRow, top_table
from scalable_xmr.tuning.sdml_backend import SDMLBackend, sdml_schedule
from scalable_xmr.tuning.space import build_space
from scalable_xmr.tuning.sweep import SweepRequest, _finish

# model -> (what a 10-epoch trial runs, what `xmr train-pairs --config best.json` runs)
SCHEDULES = {
    "vse": ("lr ×0.1 after 5 of 10 epochs (full schedule compressed: after 15 of 30 epochs)",
            "lr ×0.1 after 15 of 30 epochs (full schedule)"),
    "mtfn": ("lr ×0.5 every 2 of 10 epochs (full schedule compressed: every 10 of 50 epochs); "
             "text-text: lr ×0.5 every 2 of 5 epochs",
             "lr ×0.5 every 10 of 50 epochs (full schedule); text-text: lr ×0.5 every 10 of 25 epochs"),
    "mmca": ("lr ×0.1 after 5 of 10 epochs (full schedule compressed: after 10 of 20 epochs)",
             "lr ×0.1 after 10 of 20 epochs (full schedule)"),
    "vsa": ("lr ×0.1 after 5 of 10 epochs (full schedule compressed: after 20 of 40 epochs)",
            "lr ×0.1 after 20 of 40 epochs (full schedule)"),
}


def _branch_meta(model: str, tmp_path: Path, epochs: int = 10) -> tuple[BranchBackend, dict]:
    """sweep.json's content as run_sweep makes it, without Ray or data (prepare reads no data)."""
    backend = BranchBackend(model)
    space = build_space(model)
    info = backend.prepare(SweepRequest(model, str(tmp_path / "pairs"), epochs=epochs), tmp_path, space)
    meta = {**info, "name": "s", "model": model, "metric": "best_rsum", "mode": "max", "epochs": epochs,
            "tuned": sorted(space.tuned()), "swept": [], "log_params": []}
    meta["schedule"] = backend.schedule(meta)
    return backend, meta


@pytest.mark.parametrize("model", sorted(SCHEDULES))
def test_branch_trials_run_the_models_schedule_compressed(model, tmp_path):
    backend, meta = _branch_meta(model, tmp_path)
    full_epochs = {"vse": 30, "mtfn": 50, "mmca": 20, "vsa": 40}[model]
    assert meta["trainer_base"]["epochs"] == 10
    assert meta["trainer_base"]["lr_schedule_epochs"] == full_epochs
    assert (meta["schedule"], backend.final_schedule(meta)) == SCHEDULES[model]


def test_a_sweep_as_long_as_the_schedule_is_not_compressed(tmp_path):
    backend, meta = _branch_meta("mmca", tmp_path, epochs=20)
    assert meta["trainer_base"]["lr_schedule_epochs"] == 0
    assert meta["schedule"] == backend.final_schedule(meta) == "lr ×0.1 after 10 of 20 epochs (full schedule)"


def _branch_row(trial_id: str, lr: float, rsum: float) -> TrialRow:
    return TrialRow(trial_id, {"lr": lr, "margin": 0.2},
                    {"best_rsum": rsum, "rsum_selected": rsum, "rsum_rerank": rsum + 1, "best_k": 5,
                     "best_k_t2i": 2, "best_k_text": 1, "training_iteration": 10})


@pytest.mark.parametrize("model", ["vse", "mtfn"])
def test_summary_rows_carry_the_schedule_and_best_json_trains_the_full_one(model, tmp_path, monkeypatch):
    from scalable_xmr.cli.branch import build_configs, job_parser

    monkeypatch.setattr(branch_backend, "branch_test", lambda row, info, sweep_dir: {"note": "not scored"})
    backend, meta = _branch_meta(model, tmp_path)
    rows = [_branch_row("t0", 1e-3, 300.0), _branch_row("t1", 5e-4, 310.0)]
    summary = _finish(meta, tmp_path, backend, rows, Tracker("sqlite:///unused.db", "x", enabled=False), None)

    trials, final = SCHEDULES[model]
    lines = (tmp_path / "summary.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].endswith("| epochs | schedule |") and len(table) == 3
    assert all(line.endswith(f"| 10 | {trials} |") for line in table[1:])
    assert f"Schedule: trials ran {trials}; training with best.json runs {final}." in lines
    assert summary.table in (tmp_path / "summary.md").read_text()

    best = read_json(tmp_path / "best.json")
    assert best["schedule"] == {"trials": trials, "final": final}
    assert best["trial_id"] == "t1" and best["config"]["lr"] == 5e-4
    assert not {"epochs", "text_epochs", "lr_schedule_epochs"} & set(best["config"])
    # `xmr train-pairs --config best.json`: the model's full schedule, uncompressed, at the trial's lr.
    trainer = build_configs(job_parser().parse_args(["--config", str(tmp_path / "best.json")]))[0][model]
    assert trainer.lr_schedule_epochs == 0 and trainer.describe_lr() == final
    if model == "vse":  # by hand: 15 epochs at 5e-4, then 15 at 5e-5
        expected, text = [5e-4] * 15 + [5e-5] * 15, []
    else:  # x0.5 every 10 of 50 epochs; the 25 text-text epochs step at 10 and 20
        expected = [5e-4] * 10 + [2.5e-4] * 10 + [1.25e-4] * 10 + [6.25e-5] * 10 + [3.125e-5] * 10
        text = [5e-4] * 10 + [2.5e-4] * 10 + [1.25e-4] * 5
    assert (trainer.epochs, trainer.text_epochs) == (len(expected), len(text))
    assert [trainer.lr_at(e) for e in range(trainer.epochs)] == pytest.approx(expected, rel=1e-12)
    assert [trainer.lr_at(e) for e in range(trainer.text_epochs)] == pytest.approx(text, rel=1e-12)


def test_sdml_rows_say_how_many_of_the_default_epochs_they_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(sdml_backend, "sdml_test", lambda per, info, sweep_dir: {})
    backend = SDMLBackend()
    meta = {"name": "s", "model": "sdml", "metric": "best_anchor_map", "mode": "max", "epochs": 10,
            "tuned": ["lam", "lr"], "swept": [], "log_params": [], "modalities": ["audio", "text"],
            "base": from_dict(SDMLConfig, {"epochs": 10}).to_dict(), "dataset": {"name": "d"},
            "projection": {"file": "projection.arrow"}}
    meta["schedule"] = backend.schedule(meta)
    rows = [TrialRow(f"t{i}", {"modality": m, "lam": 0.5, "lr": 1e-4},
                     {"best_anchor_map": 0.5 + i / 10, "training_iteration": 10}, m)
            for i, m in enumerate(["audio", "text"])]
    _finish(meta, tmp_path, backend, rows, Tracker("sqlite:///unused.db", "x", enabled=False), None)

    trials = "10 of 200 epochs, constant lr (SDML has no lr steps)"
    text = (tmp_path / "summary.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].endswith("| epochs | schedule |")
    assert all(line.endswith(f"| 10 | {trials} |") for line in table[1:]) and len(table) == 3
    final = "200 epochs (the full training), constant lr (SDML has no lr steps)"
    assert f"Schedule: trials ran {trials}; training with best.json runs {final}." in text
    assert read_json(tmp_path / "best.json")["schedule"] == {"trials": trials, "final": final}
    assert sdml_schedule(300) == "300 epochs (more than the default 200), constant lr (SDML has no lr steps)"


def test_top_table_has_a_schedule_column_only_when_given():
    rows = [TrialRow("t0", {"lam": 0.5}, {"best_anchor_map": 0.5, "training_iteration": 3}, "audio")]
    with_schedule = top_table(rows, "best_anchor_map", "max", ["lam"], schedule="3 of 200 epochs")
    assert with_schedule.splitlines()[2] == "| 1 | t0 | audio | 0.5 | 0.5 | 3 | 3 of 200 epochs |"
    without = top_table(rows, "best_anchor_map", "max", ["lam"])
    assert without.splitlines()[2] == "| 1 | t0 | audio | 0.5 | 0.5 | 3 |"


def test_rerank_line_defaults_to_candidate_groups():
    """A best.json without t2i_groups had the sweep's default groups: candidate (MTFN-RR Eq. 15),
    the default of train-pairs' --t2i-groups too, never 'query'."""
    from scalable_xmr.branch.member import BranchSpec

    rerank = {"k_i2t": 5, "k_t2i": 2, "k_text": 1, "rsum": 310.0, "rsum_plain": 300.0}
    assert BranchSpec.t2i_groups == branch_backend.T2I_GROUPS == "candidate"
    assert rerank_line({"rerank": rerank}) == ("re-ranking on the best trial (val): I2T K=5, T2I K=2 K'=1 "
                                              "(candidate groups): rsum 310.00 (plain 300.00)")
    assert "(query groups)" in rerank_line({"rerank": {**rerank, "t2i_groups": "query"}})


# ------------------------------------------------------------------ one real sweep on a local Ray
@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    from scalable_xmr.data.paired import make_synthetic_pairs

    out = tmp_path_factory.mktemp("pairs") / "syn"
    make_synthetic_pairs(out, seed=0, n_train=40, n_val=10, n_test=10, n_regions=4, dim=16)
    return str(out)


@pytest.mark.slow
def test_a_vse_sweep_trial_steps_its_lr_compressed_and_mlflow_says_so(ray_local, pairs, tmp_path):
    from mlflow.tracking import MlflowClient

    from scalable_xmr.config import TrackingConfig
    from scalable_xmr.tuning import run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    req = SweepRequest("vse", pairs, storage=str(tmp_path / "sweeps"), name="v", num_samples=1, epochs=2,
                       scheduler="fifo", grids=("lr=0.001", "margin=0.2", "k=1", "k_text=0"),
                       base={"embed_dim": 8, "word_dim": 8, "batch_size": 16},
                       tracking=TrackingConfig(uri, "schedule-test"), verbose=0)
    summary = run_sweep(req)
    assert summary.finished and summary.n_trials == 1
    # VSE++ x0.1 after 15 of 30 epochs, in 2: 15 x 2/30 = 1 -> the second epoch runs at 1e-4.
    trials = "lr ×0.1 after 1 of 2 epochs (full schedule compressed: after 15 of 30 epochs)"
    final = "lr ×0.1 after 15 of 30 epochs (full schedule)"
    sweep_dir = Path(summary.sweep_dir)
    assert read_json(sweep_dir / "sweep.json")["schedule"] == trials
    assert read_json(sweep_dir / "best.json")["schedule"] == {"trials": trials, "final": final}
    assert summary.table.splitlines()[2].endswith(f"| 2 | {trials} |")

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("schedule-test").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.data.params["schedule"] == child.data.params["schedule"] == trials
    lrs = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "lr"))
    assert lrs == [(1, pytest.approx(1e-3)), (2, pytest.approx(1e-4))]
