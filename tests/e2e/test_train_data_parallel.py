"""``xmr train --workers-per-modality 2`` on the session's local Ray (#26): each modality on two
data-parallel Ray Train workers gives the run that one actor per modality gives (same files, the
same test mAP), leaves no training state once finished, a W the cluster cannot place is one line
before anything is written, and a failed run resumes from Ray Train's checkpoint with its own W."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from one_line import fails_one_line

from scalable_xmr.cli.train import main as train_main
from scalable_xmr.store.run_store import RunStore

MODALITIES = ("image", "text")


def _argv(run, data, *extra):
    return ["--data", data, "--run", str(run), "--no-tracking", "--no-progress", "--dim", "32",
            "--batch-size", "30", "--epochs", "3", "--checkpoint-every", "2", "--lr", "1e-3",
            *[a for m in MODALITIES for a in ("--modality", m)], *extra]


@pytest.mark.slow
def test_two_workers_per_modality_give_the_one_actor_run(tmp_path, capsys, small_xmedia, ray_local):
    runs = {w: tmp_path / f"w{w}" for w in (1, 2)}
    for w, run in runs.items():
        code = train_main(_argv(run, small_xmedia, "--workers-per-modality", str(w)))
        assert code == 0, capsys.readouterr()
    err = capsys.readouterr().err
    assert "workers: image 2, text 2 (DDP, gloo; 1 CPU each; one modality after the other)" in err
    metrics = {w: json.loads((run / "metrics.json").read_text()) for w, run in runs.items()}
    assert set(metrics[2]["map"]) == set(metrics[1]["map"]) and metrics[2]["map"]
    for pair, value in metrics[1]["map"].items():
        assert metrics[2]["map"][pair] == pytest.approx(value, abs=1e-5), pair
    meta = json.loads((runs[2] / "run.json").read_text())
    assert meta["status"] == "finished"
    for m in MODALITIES:
        assert meta["modalities"][m]["workers"] == 2 and meta["modalities"][m]["status"] == "finished"
        store = RunStore(runs[2])
        assert store.model_path(m).is_file() and store.train_log_path(m).is_file()
        assert not store.checkpoint_path(m).parent.exists()  # Ray Train's run went with the rest
    w1 = sorted(p.relative_to(runs[1]).as_posix() for p in runs[1].rglob("*") if p.is_file())
    w2 = sorted(p.relative_to(runs[2]).as_posix() for p in runs[2].rglob("*") if p.is_file())
    assert w2 == w1


@pytest.mark.slow
def test_more_workers_than_the_cluster_can_place_is_one_line(tmp_path, capsys, small_xmedia, ray_local):
    run = tmp_path / "run"
    fails_one_line(train_main, capsys, _argv(run, small_xmedia, "--workers-per-modality", "3"),
                   "--workers-per-modality 3: this cluster has 2 CPU, 0 GPU, 1 node(s), fewer CPUs than")
    assert not run.exists()
    fails_one_line(train_main, capsys, _argv(run, small_xmedia, "--workers-per-modality", "2",
                                             "--gpus-per-worker", "1"),
                   "--workers-per-modality 2 with --gpus-per-worker 1 needs 2 GPUs; this cluster has 2 CPU")
    assert not run.exists()


@pytest.mark.slow
def test_a_failed_data_parallel_run_resumes_from_ray_trains_checkpoint(tmp_path, capsys, small_xmedia,
                                                                       ray_local, crash_after):
    """Rank 1 dies after the epoch-2 checkpoint and no restart is allowed: the run fails, run.json
    says so; ``--resume`` with the same W continues from Ray Train's checkpoint (resumed at 2)."""
    from scalable_xmr.config import ResourceConfig, SDMLConfig, TrackingConfig
    from scalable_xmr.sdml.job import TrainRequest, train_sdml

    run = tmp_path / "run"
    cfg = SDMLConfig(dim=32, batch_size=25, epochs=4, checkpoint_every=2, lr=1e-3)
    crash_after({"audio/rank1": 2})
    req = TrainRequest(run_dir=str(run), dataset_uri=small_xmedia, sdml=cfg, modalities=("audio",),
                       resources=ResourceConfig(workers_per_modality=2, max_restarts=0),
                       tracking=TrackingConfig(enabled=False), show_progress=False)
    with pytest.raises(Exception):  # noqa: B017 (Ray Train's error, whichever it is)
        train_sdml(req)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "failed" and meta["modalities"]["audio"]["status"] == "failed"
    assert meta["modalities"]["audio"]["workers"] == 2
    argv = ["--data", small_xmedia, "--run", str(run), "--no-tracking", "--no-progress", "--dim", "32",
            "--batch-size", "25", "--epochs", "4", "--checkpoint-every", "2", "--lr", "1e-3",
            "--modality", "audio", "--resume"]
    fails_one_line(train_main, capsys, [*argv, "--workers-per-modality", "1"],
                   "modality 'audio' started training with --workers-per-modality 2, --resume asks for 1")
    assert train_main([*argv, "--workers-per-modality", "2"]) == 0, capsys.readouterr()
    log = json.loads(RunStore(run).train_log_path("audio").read_text())
    assert log["resumed_at_epoch"] == [2] and log["epochs"] == 4
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_ctrl_c_of_a_data_parallel_job_is_an_interrupted_run_that_resumes(tmp_path, small_xmedia):
    """SIGINT to the job's process group (Ctrl-C) while the workers train: exit 130 and the
    interrupted line (Train V2's own handler, which would abort the run as if it had ended, is kept
    off: distributed/ray_train.py), run.json failed; --resume with the same W finishes it."""
    run = tmp_path / "run"
    argv = [str(Path(sys.executable).with_name("xmr")), "train", "--data", small_xmedia, "--run", str(run),
            "--modality", "audio", "--no-tracking", "--no-progress", "--dim", "32", "--batch-size", "20",
            "--epochs", "60", "--checkpoint-every", "1", "--workers-per-modality", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("XMR_FAULTS", "RAY_ADDRESS")}
    # Both ranks stop after their epoch-2 checkpoint until the job ends (faults.py "hold"): the
    # Ctrl-C always lands mid-training, however fast 60 tiny epochs would otherwise run.
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps({"audio/rank0/hold": 2, "audio/rank1/hold": 2}))
    job = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**env, "XMR_FAULTS": str(plan)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(run.rglob("ray-train/checkpoint_*/last.pt")):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGINT)
        _, err = job.communicate(timeout=120)
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)  # whatever it left running
        except ProcessLookupError:
            pass
    assert job.returncode == 130, err
    assert f"xmr: interrupted; {run} is kept" in err, err
    # (Ray Train's placement-group cleaner prints a traceback of its own on a machine that runs
    # several Ray instances: it cannot tell which is its own; the driver's must not.)
    assert not [ln for ln in err.splitlines() if "Traceback" in ln and "PlacementGroupCleaner" not in ln]
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    done = subprocess.run([*argv, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads(RunStore(run).train_log_path("audio").read_text())
    assert log["resumed_at_epoch"] and log["epochs"] == 60
