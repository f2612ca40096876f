"""End-to-end train-pairs jobs on a local 2-CPU Ray: every model on synthetic and on mfeat pairs,
run store + MLflow + printed table, restart from a checkpoint, ensembles and --resume."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.job import BranchRequest, train_branch
from scalable_xmr.branch.scoring import similarity_matrix
from scalable_xmr.cli.branch import main
from scalable_xmr.config import TrackingConfig
from scalable_xmr.errors import XMRError
from scalable_xmr.models.registry import build_branch_model
from scalable_xmr.store import torchfile
from scalable_xmr.store.run_store import RunStore

pytestmark = pytest.mark.slow
MODELS = ("vse", "mtfn", "mmca", "vsa")
# VSA's autoencoder terms are summed over the batch like its hinge (VSA-AE-MMD Eq. 11-12); unweighted
# they dominate these few-epoch toy runs (R@10 near the thresholds below), so the tests weigh them 0.1.
VSA_RECON_WEIGHT = 0.1


def _far_above_chance(metrics, chance, factor=2.5):
    i2t, t2i = chance
    return metrics["i2t@10"] > factor * i2t and metrics["t2i@10"] > factor * t2i


def test_cli_job_trains_every_model_and_tracks_it(tmp_path, small_pairs, small_configs, chance_r10,
                                                  ray_local, capsys):
    from scalable_xmr.data.paired import make_synthetic_pairs

    target = make_synthetic_pairs(tmp_path / "target", seed=9, n_train=40, n_val=0, n_test=20, n_regions=4,
                                  dim=32, vocab_size=120, n_concepts=30)
    sets = [f"--set={m}.{k}={json.dumps(v)}" for m, cfg in small_configs.items() for k, v in cfg.items()]
    sets += ["--set", f"vsa.recon_weight={VSA_RECON_WEIGHT}"]
    argv = ["--data", small_pairs, "--run", str(tmp_path / "run"), *sum((["--model", m] for m in MODELS), []),
            "--epochs", "5", "--text-epochs", "1", "--batch-size", "16", "--lr", "5e-3",
            "--set", "mmca.lr=2e-3", "--set", "lr_decay_epochs=0", "--target", str(target), *sets,
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "pairs-test",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    store = RunStore(tmp_path / "run")
    meta = store.read_finished()
    metrics = json.loads(store.metrics_path.read_text())
    assert meta.kind == "branch" and list(meta.members) == list(MODELS)
    assert meta.members["vsa"]["settings"]["target_uri"] == str(target)
    chance = chance_r10(100, 5)
    for m in MODELS:
        entry = metrics["models"][m]
        assert _far_above_chance(entry["plain"], chance), (m, entry["plain"], chance)
        # the printed table holds the same numbers as metrics.json, plain and re-ranked
        row = next(line for line in out.splitlines() if line.split()[:1] == [m]).split()
        assert row[1:] == [f"{entry['plain'][k]:.1f}" for k in (
            "i2t@1", "i2t@5", "i2t@10", "i2t_medr", "i2t_meanr", "t2i@1", "t2i@5", "t2i@10", "t2i_medr",
            "t2i_meanr", "rsum")]
        for f in ("model.pt", "sims/test.npy", "sims/test_text.npy", "sims/val.npy", "result.json"):
            assert (store.root / "models" / m / f).is_file(), (m, f)
        assert not (store.root / "models" / m / "checkpoints").exists()  # finished: training state gone
    assert out.count("+ re-rank (i2t K=") == 4 and f"run directory : {store.root}" in out
    assert (store.plots_dir / "rerank_k.png").stat().st_size > 1000
    assert metrics["models"]["mtfn"]["text_sim"] == "S_TT"
    assert metrics["models"]["vse"]["text_sim"] == "cosine"
    # MTFN's stored test matrix holds its logits W_m f: no float32 sigmoid ties (docs/metrics.md)
    mtfn_test = np.load(store.root / "models" / "mtfn" / "sims" / "test.npy")
    assert len(np.unique(mtfn_test)) >= 0.99 * mtfn_test.size
    _check_model_file(store, small_pairs, small_configs)
    _check_mlflow(tmp_path, metrics, meta)


def _check_model_file(store, data, small_configs):
    """model.pt (weights only) rebuilds the selected VSE, whose test scores are the stored ones."""
    from scalable_xmr.data.paired import open_paired_dataset
    from scalable_xmr.models.registry import branch_config

    payload = torchfile.load(store.member_dir("vse") / "model.pt")  # checksum verified, weights_only
    assert payload["model"] == "vse" and payload["model_config"]["embed_dim"] == 32
    model = build_branch_model("vse", branch_config("vse", payload["model_config"]),
                               vocab_size=payload["vocab_size"], image_dim=payload["image_shape"][-1])
    model.load_state_dict(payload["state_dict"])
    sim = similarity_matrix(model, open_paired_dataset(data).read_split("test"))
    np.testing.assert_allclose(sim.numpy(), np.load(store.root / "models/vse/sims/test.npy"), atol=1e-5)


def _check_mlflow(tmp_path, metrics, meta):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["pairs-test"], output_format="list")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.tags["member"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == sorted(MODELS)
    for m, child in children.items():
        entry, got = metrics["models"][m], child.data.metrics
        for k in ("i2t@1", "i2t@5", "i2t@10", "t2i@1", "t2i@5", "t2i@10"):
            assert got[f"recall/{k.replace('@', '_')}"] == pytest.approx(entry["plain"][k])
            assert got[f"rerank/{k.replace('@', '_')}"] == pytest.approx(entry["rerank"][k])
        assert got["rsum"] == pytest.approx(entry["plain"]["rsum"])
        assert got["rerank/rsum"] == pytest.approx(entry["rerank"]["rsum"])
        assert child.data.params["trainer.lr"] == ("0.002" if m == "mmca" else "0.005")
        assert child.data.params["model_config.embed_dim" if m != "mtfn" else "model_config.rank"]
    history = mlflow.MlflowClient().get_metric_history(children["mtfn"].info.run_id, "loss/train")
    assert [h.step for h in history] == [1, 2, 3, 4, 5, 6]  # 5 image-text + 1 text-text epochs
    assert children["mmca"].data.params["model_config.alpha"] == "0.2"
    assert parent.data.metrics["vse/rsum"] == pytest.approx(metrics["models"]["vse"]["plain"]["rsum"])
    assert meta.mlflow["parent_run_id"] == parent.info.run_id


def test_every_model_learns_mfeat_pairs(tmp_path, mfeat_pair_data, small_configs, chance_r10, ray_local):
    trainers = {m: PairTrainerConfig(model=m, epochs=3, batch_size=32, lr=2e-3 if m == "mmca" else 5e-3,
                                     lr_decay_epochs=0) for m in MODELS}
    configs = {**small_configs, "vsa": {**small_configs["vsa"], "recon_weight": VSA_RECON_WEIGHT}}
    req = BranchRequest(run_dir=str(tmp_path / "run"), dataset_uri=mfeat_pair_data, trainers=trainers,
                       model_configs=configs, show_progress=False,
                       tracking=TrackingConfig(enabled=False))
    summary = train_branch(req)
    chance = chance_r10(400, 1)  # 2.5 % each way
    for m in MODELS:
        assert _far_above_chance(summary.metrics.models[m]["plain"], chance, factor=8), (
            m, summary.metrics.models[m]["plain"])
    assert summary.metrics.models["mtfn"]["text_sim"] == "cosine"  # 1 caption per image: no S_TT


def test_restart_ensemble_and_resume(tmp_path, small_pairs, small_configs, ray_local, crash_after):
    def request(epochs=3, **kw):
        trainers = {"vse": PairTrainerConfig(model="vse", epochs=epochs, batch_size=16, lr=5e-3, seed=3)}
        kw.setdefault("tracking", TrackingConfig(f"sqlite:///{tmp_path}/mlflow.db", "ens"))
        # The resume below pretends a finished member never finished and continues it from its
        # checkpoint of the last epoch: the finished run must keep its checkpoints for that.
        kw.setdefault("keep_checkpoints", True)
        return BranchRequest(run_dir=str(tmp_path / "run"), dataset_uri=small_pairs, trainers=trainers,
                            model_configs={"vse": small_configs["vse"]}, ensemble=2, show_progress=False,
                            **kw)

    # vse-seed4 hard-crashes (os._exit) once, right after its epoch-1 checkpoint.
    crash_after({"vse-seed4": 1})
    summary = train_branch(request())
    crashed = summary.results["vse-seed4"]
    assert crashed.resumed_at_epoch == [1] and summary.results["vse-seed3"].resumed_at_epoch == []
    assert [h["epoch"] for h in crashed.history] == [1, 2, 3]
    marker = tmp_path / "run/models/vse-seed4/checkpoints/.fault_injected"
    assert int(marker.read_text().split()[0]) != crashed.pid  # finished in a new process
    # The ensemble averages the members' similarity matrices.
    models = tmp_path / "run/models"
    mean = (np.load(models / "vse-seed3/sims/test.npy") + np.load(models / "vse-seed4/sims/test.npy")) / 2
    np.testing.assert_allclose(np.load(models / "vse/sims/test.npy"), mean, rtol=1e-6)
    ens = summary.metrics.ensembles["vse"]
    assert ens["members"] == ["vse-seed3", "vse-seed4"]
    first = np.argmax(mean, axis=1) // 5 == np.arange(100)  # ties: the first maximum, as ranked
    assert ens["plain"]["i2t@1"] == pytest.approx(100 * first.mean())
    assert summary.metrics.test["protocol"] == "all test images"
    # Pretend the job died before vse-seed4 was recorded: --resume trains only what is missing.
    store = RunStore(tmp_path / "run")
    meta = store.read()
    meta.status, meta.members["vse-seed4"]["status"] = "running", "pending"
    store.write(meta)
    kept = (models / "vse-seed3/model.pt").read_bytes()
    with pytest.raises(XMRError, match="already holds a running run; pass --resume"):
        train_branch(request())
    with pytest.raises(XMRError, match="member 'vse-seed3' was started with other settings"):
        train_branch(request(epochs=4, resume=True))
    again = train_branch(request(resume=True))
    assert again.results["vse-seed4"].resumed_at_epoch == [1, 3]  # from its last checkpoint: no epochs
    assert (models / "vse-seed3/model.pt").read_bytes() == kept
    assert store.read_finished().members["vse-seed4"]["status"] == "finished"
    assert again.metrics.ensembles["vse"]["plain"] == pytest.approx(ens["plain"])
    # --resume of the finished run without tracking: nothing trains, nothing is rewritten.
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    done = train_branch(request(resume=True, tracking=TrackingConfig(enabled=False)))
    assert done.metrics == again.metrics and done.table
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_gpus_asked_of_a_cpu_cluster_fail_fast(tmp_path, small_pairs, ray_local):
    req = BranchRequest(run_dir=str(tmp_path / "run"), dataset_uri=small_pairs, gpus_per_model=1.0,
                       trainers={"vse": PairTrainerConfig(model="vse", epochs=1)}, show_progress=False,
                       tracking=TrackingConfig(enabled=False))
    with pytest.raises(XMRError, match="--gpus-per-model 1 but this Ray cluster has no GPUs"):
        train_branch(req)
    assert not (tmp_path / "run").exists()


def test_patience_stops_a_member_and_run_json_and_the_footer_say_where(tmp_path, small_pairs, small_configs,
                                                                       ray_local, capsys):
    """A learning rate of 1e-9 leaves the rankings as they are: val rsum never beats epoch 1, so
    --patience 1 stops VSE at epoch 2; run.json's member entry and the footer record it."""
    from scalable_xmr.config import patience_stop

    sets = [f"--set=vse.{k}={json.dumps(v)}" for k, v in small_configs["vse"].items()]
    argv = ["--data", small_pairs, "--run", str(tmp_path / "run"), "--model", "vse", "--epochs", "6",
            "--batch-size", "16", "--lr", "1e-9", "--patience", "1", *sets, "--no-tracking", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    store = RunStore(tmp_path / "run")
    entry = store.read_finished().members["vse"]
    result = json.loads((store.member_dir("vse") / "result.json").read_text())
    rsums = [h["val_score"] for h in result["history"]]
    stop = patience_stop(rsums + [-1.0] * (6 - len(rsums)), 1, higher_is_better=True)
    assert entry["patience"] == 1 and entry["settings"]["trainer"]["patience"] == 1
    assert entry["stopped_early"] == {"image_text": stop, "text_text": None} and stop == len(rsums) < 6
    assert (f"epochs        : vse: stopped early at epoch {stop} of 6 (best epoch "
            f"{entry['best_epoch']['image_text']}, --patience 1)") in out
    assert "training state: removed " in out and not (store.member_dir("vse") / "checkpoints").exists()
