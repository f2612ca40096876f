"""SDML sweeps end to end on a local Ray: trials, MLflow parent/children, best.json -> training job,
separability (a trial reads its own modality's table and nothing else), and trials of W
data-parallel workers (Ray Train inside Tune)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from scalable_xmr.config import SDMLConfig, TrackingConfig
from scalable_xmr.io import read_json

pytestmark = pytest.mark.slow

BASE = {"dim": 32, "hidden": 64, "batch_size": 20, "checkpoint_every": 1}


def _request(data: str, tmp_path: Path, **kw):
    from scalable_xmr.tuning import SweepRequest

    args = {"model": "sdml", "dataset_uri": data, "storage": str(tmp_path / "sweeps"), "name": "s",
            "num_samples": 2, "epochs": 2, "scheduler": "fifo", "max_concurrent": 2, "base": BASE,
            "tracking": TrackingConfig(f"sqlite:///{tmp_path}/mlflow.db", "sweep-test"), "verbose": 0}
    return SweepRequest(**{**args, **kw})


def _mlflow_runs(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_sdml_sweep_mlflow_best_json_and_training_job(ray_local, small_xmedia, tmp_path):
    from scalable_xmr.cli.branch import load_best
    from scalable_xmr.cli.train import main as train_main
    from scalable_xmr.errors import InputError
    from scalable_xmr.functional.retrieval import mean_average_precision
    from scalable_xmr.store.run_store import RunStore
    from scalable_xmr.tuning import run_sweep

    summary = run_sweep(_request(small_xmedia, tmp_path, modalities=("audio", "text")))
    assert summary.finished and summary.n_trials == 4  # 2 modalities x 2 samples
    sweep = Path(summary.sweep_dir)
    # Finished: no trial's training state is left (Tune's checkpoint folders, the trials' own); every
    # trial keeps its selected model.
    assert not list(sweep.glob("*/checkpoint_*")) and not list(sweep.rglob("last.pt*"))
    assert all((sweep / "trials" / t.trial_id / "modalities" / t.config["modality"] / "model.pt").is_file()
               for t in summary.trials)

    # MLflow: one parent, one child per trial under it, with the trial's config and per-epoch metrics.
    client, parents, children = _mlflow_runs(tmp_path)
    assert [p.info.run_name for p in parents] == ["sweep:s"]
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    per_modality: dict[str, list] = {"audio": [], "text": []}
    for child in children:
        params = child.data.params
        assert 0.0 <= float(params["lam"]) <= 1.0 and 1e-5 <= float(params["lr"]) <= 1e-3
        assert params["base.hidden"] == "64" and child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "loss/val_label")
        assert [m.step for m in history] == [1, 2]
        assert "map/val_anchor_best" in child.data.metrics and "loss/train" in child.data.metrics
        # lr is always swept for SDML: the child's param is the rate the trial trained with
        assert not any("test" in k for k in child.data.metrics), child.data.metrics  # val only
        per_modality[params["modality"]].append(child)
    for trial in summary.trials:  # what the trials reported to Tune: no test figure
        assert not any("test" in k for k in trial.metrics), sorted(trial.metrics)
    assert {m: len(v) for m, v in per_modality.items()} == {"audio": 2, "text": 2}

    # best.json: per modality, the trial with the highest validation anchor mAP (read from MLflow).
    best = read_json(sweep / "best.json")
    assert best["model"] == "sdml" and best["metric"] == "best_anchor_map"
    for m, runs in per_modality.items():
        entry = best["per_modality"][m]
        winner = next(r for r in runs if r.data.params["trial_id"] == entry["trial_id"])
        top = max(r.data.metrics["map/val_anchor_best"] for r in runs)  # ties are possible on tiny data
        assert winner.data.metrics["map/val_anchor_best"] == pytest.approx(top)
        assert entry["config"]["lam"] == pytest.approx(float(winner.data.params["lam"]))
        assert entry["config"]["hidden"] == 64
    # Only the chosen trials are scored on test, once, after the sweep: their test embeddings are
    # written then (by the selected model of each); no other trial ever encoded its test split.
    chosen = {best["per_modality"][m]["trial_id"] for m in ("audio", "text")}
    for trial in summary.trials:
        m = trial.config["modality"]
        tested = RunStore(sweep / "trials" / trial.trial_id).embeddings_path(m, "test").is_file()
        assert tested == (trial.trial_id in chosen), trial.trial_id
    emb = {m: RunStore(best["per_modality"][m]["trial_dir"]).read_embeddings(m, "test", 20)
           for m in ("audio", "text")}
    expected = mean_average_precision(emb["audio"][2], emb["text"][2], emb["audio"][1], emb["text"][1])
    test = best["cross_modal"]
    assert test["label"] == "test (chosen config, scored once)" and test["split"] == "test"
    assert test["map"]["audio-text"] == pytest.approx(expected)
    assert test["map_mean"] == pytest.approx(np.mean(list(test["map"].values())))
    assert set(test["anchor_map"]) == {"audio", "text"}
    assert parents[0].data.metrics["map/mean"] == pytest.approx(test["map_mean"])
    assert parents[0].data.metrics["test/audio/anchor_map"] == pytest.approx(test["anchor_map"]["audio"])
    assert parents[0].data.params["test_figures"] == "test (chosen config, scored once)"
    assert summary.test_line.startswith("test (chosen config, scored once): anchor mAP audio ")
    assert summary.test_line in (sweep / "summary.md").read_text()
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"best.json", "summary.md", "best_anchor_map_vs_hyperparameters.png"} <= artifacts
    assert (sweep / "plots" / "best_anchor_map_vs_hyperparameters.png").stat().st_size > 0
    assert len([line for line in (sweep / "summary.md").read_text().splitlines()
                if line.startswith("| 1 ") or line.startswith("| 2 ")]) == 4

    # The train-pairs job refuses an SDML best.json.
    with pytest.raises(InputError, match=r"not a branch-model best.json \(model 'sdml'"):
        load_best(str(sweep / "best.json"))

    # The training job takes best.json and trains each modality with its winner.
    run = tmp_path / "run"
    code = train_main(["--data", small_xmedia, "--run", str(run), "--config", str(sweep / "best.json"),
                       "--epochs", "1", "--dim", "32", "--modality", "audio", "--modality", "text",
                       "--strategy", "joint", "--no-tracking", "--no-progress"])
    assert code == 0
    trained = read_json(run / "run.json")["modalities"]
    for m in ("audio", "text"):
        assert trained[m]["config"]["lam"] == pytest.approx(best["per_modality"][m]["config"]["lam"])
        assert trained[m]["config"]["lr"] == pytest.approx(best["per_modality"][m]["config"]["lr"])
        assert trained[m]["config"]["hidden"] == 64 and trained[m]["status"] == "finished"


def test_a_trial_reads_only_its_own_modality(ray_local, small_xmedia, tmp_path):
    """Every other modality's table is replaced by garbage: an audio-only sweep must not notice."""
    from scalable_xmr.data.modality.dataset import open_dataset
    from scalable_xmr.errors import InputError
    from scalable_xmr.tuning import run_sweep

    data = tmp_path / "data"
    shutil.copytree(small_xmedia, data)
    for m in ("image", "text", "3d", "video"):
        (data / f"{m}.parquet").write_bytes(b"not a parquet file")
    with pytest.raises((InputError, OSError)):  # the garbage really is unreadable
        open_dataset(str(data), validate=False).read_split("text", "train")

    summary = run_sweep(_request(str(data), tmp_path, modalities=("audio",), num_samples=1, epochs=1,
                                 tracking=TrackingConfig(enabled=False)))
    assert summary.finished and summary.n_trials == 1
    assert list(summary.best["per_modality"]) == ["audio"]
    assert summary.best["per_modality"]["audio"]["anchor_map"] > 0
    (trial,) = summary.trials
    n_train = open_dataset(small_xmedia).split_sizes()["audio"]["train"]
    assert trial.config["modality"] == "audio" and trial.metrics["n_train"] == n_train
    trial_dir = Path(summary.best["per_modality"]["audio"]["trial_dir"])
    assert [p.name for p in (trial_dir / "modalities").iterdir()] == ["audio"]


def test_gpus_asked_of_a_cluster_without_gpus(ray_local, small_xmedia, tmp_path):
    from scalable_xmr.errors import InputError
    from scalable_xmr.tuning import run_sweep

    with pytest.raises(InputError, match=r"--gpus-per-trial 1 but this Ray cluster has no GPUs"):
        run_sweep(_request(small_xmedia, tmp_path, gpus_per_trial=1.0,
                           tracking=TrackingConfig(enabled=False)))
    assert not (tmp_path / "sweeps" / "s").exists()


def test_a_sweep_with_two_workers_per_modality_runs_ray_train_in_each_trial(ray_local, small_xmedia,
                                                                             tmp_path, capsys):
    """--workers-per-modality 2 (#26 item 4): each trial is a TorchTrainer of two DDP workers inside
    its Tune trial; every epoch reaches Tune (and so MLflow, from the driver), best.json is written
    as for one worker, and the start line says W and how many trials run at once. ASHA ends the
    first trial at its last epoch (and may stop the second at its first): the second trial's
    workers can be placed only if the first one's Train placement group was released."""
    from scalable_xmr.cli.train import load_overrides
    from scalable_xmr.store.run_store import RunStore
    from scalable_xmr.tuning import run_sweep

    # 2 logical CPUs: a trial takes 0.25 (itself) + 2 workers x 0.5 -> one trial at a time
    summary = run_sweep(_request(small_xmedia, tmp_path, modalities=("audio",), workers_per_modality=2,
                                 cpus_per_trial=0.5, max_concurrent=None, scheduler="asha"))
    err = capsys.readouterr().err
    assert ("workers: audio 2 per trial (Ray Train in each Tune trial; DDP, gloo; 0.5 CPU each, 0.25 CPU "
            "for the trial itself): 1 trial at a time on 2 CPU, 0 GPU") in err, err
    assert summary.finished and summary.n_trials == 2
    sweep = Path(summary.sweep_dir)
    meta = read_json(sweep / "sweep.json")
    assert meta["workers_per_modality"] == 2 and meta["max_concurrent"] == 1 and meta["gpus_per_trial"] == 0
    epochs = {}
    for trial in summary.trials:  # each ran on two workers and reported the sweep's scores every epoch
        epochs[trial.trial_id] = trial.metrics["training_iteration"]
        assert trial.error is None and trial.metrics["epoch"] == epochs[trial.trial_id] in (1, 2)
        assert trial.metrics["workers"] == 2 and 0.0 <= trial.metrics["best_anchor_map"] <= 1.0
        directory = sweep / "trials" / trial.trial_id
        assert (directory / "modalities" / "audio" / "model.pt").is_file()  # a stopped one's too
        assert RunStore(directory).embeddings_path("audio", "val").is_file()
    assert max(epochs.values()) == 2
    # Finished: Ray Train's runs (the trials' checkpoints/) went with the rest of the training state.
    assert not list(sweep.rglob("ray-train")) and not list(sweep.rglob("last.pt*"))

    # MLflow: the same parent and children as a one-worker sweep, each epoch logged once.
    client, parents, children = _mlflow_runs(tmp_path)
    assert [p.info.run_name for p in parents] == ["sweep:s"] and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["workers_per_modality"] == "2"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert child.data.params["workers_per_modality"] == "2"
        steps = list(range(1, epochs[child.data.params["trial_id"]] + 1))
        for name in ("loss/val_label", "map/val_anchor"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, name)] == steps, name

    # best.json: as for one worker, and a training job takes it.
    best = read_json(sweep / "best.json")
    entry = best["per_modality"]["audio"]
    assert entry["trial_id"] in epochs and entry["epochs_trained"] == epochs[entry["trial_id"]]
    overrides = load_overrides(str(sweep / "best.json"))
    assert overrides.config_for(SDMLConfig(dim=32), "audio").lam == pytest.approx(entry["config"]["lam"])
