"""An SDML sweep with --population on a local Ray: every configuration reported to Tune results and
MLflow, each member trained as its own ModalityTrainer would, best.json from the members."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from scalable_xmr.config import SDMLConfig, TrackingConfig
from scalable_xmr.io import read_json

pytestmark = pytest.mark.slow

BASE = {"dim": 32, "hidden": 64, "batch_size": 20, "checkpoint_every": 1}


def test_population_sweep_reports_every_configuration(ray_local, small_xmedia, tmp_path, one_torch_thread):
    from mlflow.tracking import MlflowClient

    from scalable_xmr.sdml.modality_spec import ModalitySpec
    from scalable_xmr.sdml.trainer import ModalityTrainer
    from scalable_xmr.store.run_store import RunStore
    from scalable_xmr.tuning import SweepRequest, run_sweep

    req = SweepRequest(
        "sdml", small_xmedia, storage=str(tmp_path / "sweeps"), name="pop", num_samples=1, epochs=2,
        scheduler="fifo", max_concurrent=2, modalities=("audio", "text"), base=BASE,
        grids=("lam=0.2,0.8", "lr=1e-3,3e-3"), population=4,
        tracking=TrackingConfig(f"sqlite:///{tmp_path}/mlflow.db", "pop-test"), verbose=0)
    summary = run_sweep(req)
    sweep = Path(summary.sweep_dir)
    meta = read_json(sweep / "sweep.json")
    # 2 modalities x one population of 4 = 2 Tune trials holding 8 configurations.
    assert summary.finished and summary.n_trials == 8
    assert meta["n_trials"] == 2 and meta["n_configurations"] == 8 and len(meta["populations"]) == 1
    configs = {(t.group, t.config["lam"], t.config["lr"]) for t in summary.trials}
    assert configs == {(m, lam, lr) for m in ("audio", "text") for lam in (0.2, 0.8) for lr in (1e-3, 3e-3)}
    assert all(t.error is None and t.metrics["training_iteration"] == 2 for t in summary.trials)

    # MLflow: one child run per configuration, under the parent, with its own values and metrics.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("pop-test").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.params["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parent) == 1 and parent[0].data.params["population"] == "4"
    assert set(children) == {t.trial_id for t in summary.trials}
    for t in summary.trials:
        child = children[t.trial_id]
        assert child.info.status == "FINISHED" and child.data.params["population_size"] == "4"
        assert float(child.data.params["lam"]) == t.config["lam"] and child.data.params["modality"] == t.group
        history = client.get_metric_history(child.info.run_id, "loss/val_label")
        assert [m.step for m in history] == [1, 2]
        assert child.data.metrics["map/val_anchor_best"] == pytest.approx(t.metrics["best_anchor_map"])

    # best.json: per modality, the member with the highest validation anchor mAP; its model exists.
    best = read_json(sweep / "best.json")
    for m in ("audio", "text"):
        entry = best["per_modality"][m]
        top = max(t.metrics["best_anchor_map"] for t in summary.trials if t.group == m)
        assert entry["anchor_map"] == pytest.approx(top)
        assert RunStore(entry["trial_dir"]).model_path(m).is_file()
    assert set(best["cross_modal"]["anchor_map"]) == {"audio", "text"}

    # A member trained what its own ModalityTrainer trains: same per-epoch validation label loss.
    member = next(t for t in summary.trials if t.group == "audio" and t.config["lam"] == 0.8
                  and t.config["lr"] == 3e-3)
    run = tmp_path / "single"
    run.mkdir()
    shutil.copy(sweep / "projection.arrow", run / "projection.arrow")
    cfg = SDMLConfig(**{**BASE, "epochs": 2, "lam": 0.8, "lr": 3e-3})
    single = ModalityTrainer(ModalitySpec(
        run_dir=str(run), modality="audio", config=cfg, dataset_uri=small_xmedia,
        n_classes=meta["dataset"]["n_classes"], projection_sha256=meta["projection"]["sha256"],
        eval_splits=("val",)))
    single.fit()
    history = client.get_metric_history(children[member.trial_id].info.run_id, "loss/val_label")
    np.testing.assert_allclose([m.value for m in sorted(history, key=lambda m: m.step)],
                               [h["loss_val_label"] for h in single.history], rtol=1e-4)
    log = read_json(RunStore(sweep / "trials" / member.trial_id).train_log_path("audio"))
    assert log["best_epoch"] == single.best_epoch and log["population"]["size"] == 4
