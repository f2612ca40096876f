"""The SDML job tracked to an MLflow tracking server (issue #13 item 4), as on a cluster.

The test starts ``mlflow server`` on 127.0.0.1 itself (tests/servers.py: sqlite backend, artifacts
proxied by the server into a local directory) and stops it; ``xmr train --tracking-uri http://...``
logs there, and everything is read back through the server with an ``MlflowClient``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers import MlflowServer

from scalable_xmr.cli.train import main as train_main
from scalable_xmr.store.run_store import RunStore

pytestmark = pytest.mark.slow
MODALITIES = ("image", "audio", "3d")
EPOCHS = 3
PLOTS = ("map_heatmap.png", "precision_recall.png", "precision_scope.png")


def test_sdml_job_logs_parent_children_metrics_and_plots_to_a_server(tmp_path, small_xmedia, ray_local,
                                                                     capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default store ./mlflow.db would go
    run = tmp_path / "runs" / "served"
    with MlflowServer(tmp_path / "mlflow") as server:
        argv = ["--data", small_xmedia, "--run", str(run), *sum((["--modality", m] for m in MODALITIES), []),
                "--epochs", str(EPOCHS), "--dim", "32", "--batch-size", "20", "--checkpoint-every", "1",
                "--tracking-uri", server.uri, "--experiment", "served", "--no-progress"]
        assert train_main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("served")
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and len(runs) == 1 + len(MODALITIES)
        parent = parents[0]
        children = {r.data.tags["modality"]: r for r in runs if r is not parent}
        assert sorted(children) == sorted(MODALITIES)
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
        assert all(r.info.status == "FINISHED" for r in runs)

        # run.json points at the server's runs; the job printed where they are.
        meta = RunStore(run).read_finished()
        assert meta.mlflow["tracking_uri"] == server.uri
        assert meta.mlflow["parent_run_id"] == parent.info.run_id
        assert {m: meta.modalities[m]["mlflow_run_id"] for m in MODALITIES} == {
            m: r.info.run_id for m, r in children.items()}
        assert server.uri in out

        # Metrics: every ordered pair's mAP and the mean as metrics.json has them; per-epoch losses
        # of each child as its training log recorded them, one step per epoch.
        metrics = json.loads(RunStore(run).metrics_path.read_text())
        logged = parent.data.metrics
        assert len(metrics["map"]) == len(MODALITIES) * (len(MODALITIES) - 1)
        for pair, value in metrics["map"].items():
            assert logged[f"map/{pair}"] == pytest.approx(value)
        assert logged["map/mean"] == pytest.approx(metrics["map_mean"])
        for m, child in children.items():
            log = json.loads(RunStore(run).train_log_path(m).read_text())
            history = client.get_metric_history(child.info.run_id, "loss/val_label")
            assert [h.step for h in history] == list(range(1, EPOCHS + 1))
            assert [h.value for h in history] == pytest.approx([h["loss_val_label"] for h in log["history"]])
            assert child.data.params["modality"] == m

        # Plot artifacts went through the server (proxied artifact URIs) and download intact.
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        listed = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {*PLOTS, "metrics.json", "projection.arrow"} <= listed
        got = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "download")))
        for plot in PLOTS:
            data = (got / plot).read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
            assert data == (RunStore(run).plots_dir / plot).read_bytes()
        served = list((tmp_path / "mlflow" / "artifacts").rglob("map_heatmap.png"))
        assert len(served) == 1  # stored by the server, in its artifact root
    assert not (run.parent / "mlflow.db").exists()  # no local sqlite fallback beside the run
    assert not (tmp_path / "mlflow.db").exists()  # nor the default store in the working directory
