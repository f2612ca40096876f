"""Runs and sweeps on object storage: ``--run s3://...`` / ``--storage s3://...`` against moto's
S3 server on 127.0.0.1 (started here), configured only through the standard AWS variables.

The module runs its own local Ray, started after the variables are set (Ray workers inherit the
environment of the process that starts Ray); the session's Ray comes back afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import LOCAL_RAY
from ray import tune
from servers import MotoServer

from scalable_xmr.cli.branch import main as branch_main
from scalable_xmr.cli.extend import main as add_main
from scalable_xmr.cli.train import main as train_main
from scalable_xmr.config import TrackingConfig
from scalable_xmr.store import remote, training_state
from scalable_xmr.store.run_store import RunStore

BUCKET = "xmr-e2e"
TINY_EPOCHS = 4
TINY = ["--dim", "32", "--epochs", str(TINY_EPOCHS), "--batch-size", "20", "--checkpoint-every", "2",
        "--lr", "1e-3", "--no-progress"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory, ray_local_paused):
    import ray

    root = tmp_path_factory.mktemp("s3")
    server = MotoServer(root / "moto").start()
    saved = dict(os.environ)
    try:
        server.create_bucket(BUCKET)
        os.environ.update(server.env())
        os.environ[remote.CACHE_ENV] = str(root / "cache-a")
        ray.init(**LOCAL_RAY)
        yield server, root
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def bucket_fs(server: MotoServer) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=server.endpoint, access_key="testing", secret_key="testing",
                             region="us-east-1", scheme="http")


def bucket_objects(server: MotoServer, prefix: str) -> dict[str, bytes]:
    fs = bucket_fs(server)
    out = {}
    for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)):
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as f:
                out[i.path[len(BUCKET) + len(prefix) + 2:]] = f.read()
    return out


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_train_crash_resume_and_add_modality_on_s3(s3, small_xmedia, crash_after, monkeypatch, capsys):
    server, root = s3
    uri = f"s3://{BUCKET}/runs/sdml"
    tracking = ["--tracking-uri", f"sqlite:///{root}/mlflow.db"]
    # 1. Train; the image actor dies after its epoch-2 checkpoint and resumes from it. The finished
    # run keeps its checkpoints (step 2 resumes from one).
    crash_after({"image": 2})
    assert train_main(["--run", uri, "--data", small_xmedia, "--modality", "image", "--modality", "audio",
                       "--keep-checkpoints", *TINY, *tracking]) == 0
    assert "modalities/audio/checkpoints/last.pt" in bucket_objects(server, "runs/sdml")
    assert f"run directory : {uri}\n" in capsys.readouterr().out  # the footer names the URI
    store = RunStore(uri)
    meta = store.read_finished()
    assert meta.modalities["image"]["resumed_at_epoch"] == [2]
    # 2. A failed run (audio unfinished), then its local mirror lost: --resume starts from the bucket.
    image_model = store.model_path("image").read_bytes()
    meta.status, meta.modalities["audio"] = "failed", {"status": "failed", "error": "boom",
                                                        "config": meta.modalities["audio"]["config"]}
    store.write(meta)
    shutil.rmtree(store.root)
    assert train_main(["--run", uri, "--data", small_xmedia, "--modality", "image", "--modality", "audio",
                       "--resume", *TINY, *tracking]) == 0
    meta = RunStore(uri).read_finished()
    audio = meta.modalities["audio"]  # resumed from its last checkpoint, which came from the bucket
    assert audio["status"] == "finished" and audio["resumed_at_epoch"] == [TINY_EPOCHS], audio
    assert store.model_path("image").read_bytes() == image_model  # downloaded, not retrained
    # 3. Add a modality, its data read from the bucket too.
    pafs.copy_files(small_xmedia, f"{BUCKET}/data/xmedia", destination_filesystem=bucket_fs(server))
    data_uri = f"s3://{BUCKET}/data/xmedia"
    assert add_main(["--run", uri, "--modality", "video", "--data", data_uri, "--no-progress"]) == 0
    assert RunStore(uri).read_finished().modalities["video"]["source"] == {"dataset": data_uri}
    objects = bucket_objects(server, "runs/sdml")
    for m in ("image", "audio", "video"):
        for f in ("model.pt", "train_log.json", "embeddings/val.parquet", "embeddings/test.parquet"):
            assert f"modalities/{m}/{f}" in objects, f"{m}/{f} not in the bucket"
    # Step 2 finished the run without --keep-checkpoints: its training state left the bucket too.
    assert not any("/checkpoints/" in k for k in objects), sorted(objects)
    assert {"run.json", "projection.arrow", "metrics.json", "plots/map_heatmap.png"} <= set(objects)
    assert not any(k.startswith(".staging") or k.endswith(".lock") for k in objects)
    assert json.loads(objects["run.json"])["status"] == "finished"
    assert len(json.loads(objects["metrics.json"])["map"]) == 6  # 3 modalities, ordered pairs
    # 4. A fresh mirror (another machine's cache) reads back the same run, byte for byte.
    first = tree(store.root)
    monkeypatch.setenv(remote.CACHE_ENV, str(root / "cache-b"))
    fresh = RunStore(uri)
    assert fresh.root != store.root and tree(fresh.root) == first
    assert {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()} == first
    assert fresh.read_finished().finished_modalities() == ["image", "audio", "video"]
    import scalable_xmr

    run = scalable_xmr.load_run(uri)  # the search helper, from object storage
    assert sorted(run.meta.finished_modalities()) == ["audio", "image", "video"]


def test_a_data_parallel_modality_keeps_its_ray_train_run_in_the_bucket(s3, small_xmedia, crash_after):
    """W=2: Ray Train's storage is the modality's checkpoints/ key in the bucket (which every node
    reaches), not the driver's mirror; a worker killed mid-epoch resumes from the bucket; dropping
    the training state deletes the Ray Train run there too."""
    server, _ = s3
    uri = f"s3://{BUCKET}/runs/ddp"
    crash_after({"audio/rank1/mid-epoch": 3})
    assert train_main(["--run", uri, "--data", small_xmedia, "--modality", "audio", "--workers-per-modality",
                       "2", "--keep-checkpoints", "--no-tracking", *TINY]) == 0
    store = RunStore(uri)
    assert store.read_finished().modalities["audio"]["resumed_at_epoch"] == [2]
    checkpoints = "modalities/audio/checkpoints/ray-train/"
    kept = [k for k in bucket_objects(server, "runs/ddp") if k.startswith(checkpoints)]
    assert any(k.endswith("/last.pt") for k in kept), kept
    local = store.checkpoint_path("audio").parent
    assert not (local / "ray-train").exists()  # in the bucket only
    training_state.drop([local])
    assert not [k for k in bucket_objects(server, "runs/ddp") if "/checkpoints/" in k]


def test_train_pairs_on_s3(s3, small_pairs, small_configs):
    server, root = s3
    uri = f"s3://{BUCKET}/runs/pairs"
    sets = [f"--set=vse.{k}={json.dumps(v)}" for k, v in small_configs["vse"].items()]
    assert branch_main(["--data", small_pairs, "--run", uri, "--model", "vse", "--epochs", "2",
                       "--batch-size", "16", *sets, "--tracking-uri", f"sqlite:///{root}/mlflow.db",
                       "--no-progress"]) == 0
    objects = bucket_objects(server, "runs/pairs")
    assert {"run.json", "metrics.json", "models/vse/model.pt", "models/vse/result.json",
            "models/vse/sims/test.npy"} <= set(objects)
    assert not any("/checkpoints/" in k for k in objects)  # finished: training state removed, bucket too
    assert json.loads(objects["run.json"])["status"] == "finished"


class InterruptSecond(tune.Callback):
    """Ctrl-C (SIGINT to the driver) when the second trial reports its 2nd epoch, once (``armed``);
    Tune keeps callbacks in tuner.pkl, the file keeps this one from firing after the resume."""

    def __init__(self, armed: Path):
        self.armed, self.completed = armed, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.armed.exists() and self.completed >= 1 and result["training_iteration"] == 2:
            self.armed.unlink()
            os.kill(os.getpid(), signal.SIGINT)


def test_sweep_on_s3_interrupted_and_resumed(s3, small_xmedia):
    from scalable_xmr.tuning import SweepRequest, run_sweep

    server, root = s3
    armed = root / "armed"
    armed.touch()
    storage = f"s3://{BUCKET}/sweeps"
    tracking = TrackingConfig(f"sqlite:///{root}/mlflow.db", "sweep-s3")
    req = SweepRequest(model="sdml", dataset_uri=small_xmedia, storage=storage, name="s", num_samples=2,
                       epochs=3, scheduler="fifo", max_concurrent=1, modalities=("audio",),
                       base={"dim": 32, "hidden": 32, "batch_size": 20, "checkpoint_every": 1},
                       tracking=tracking, verbose=0)
    first = run_sweep(req, callbacks=(InterruptSecond(armed),))
    assert not first.finished and not armed.exists()
    objects = bucket_objects(server, "sweeps/s")
    assert json.loads(objects["sweep.json"])["status"] == "interrupted" and "tuner.pkl" in objects
    second = run_sweep(SweepRequest("sdml", "", storage=storage, name="s", resume=True, tracking=tracking,
                                    verbose=0))  # Tune restores from the bucket
    assert second.finished and second.n_trials == 2
    assert all(t.metrics["training_iteration"] == 3 and t.error is None for t in second.trials)
    objects = bucket_objects(server, "sweeps/s")
    assert {"sweep.json", "best.json", "summary.md", "tuner.pkl"} <= set(objects)
    assert json.loads(objects["sweep.json"])["status"] == "finished"
    trial_models = [k for k in objects if k.startswith("trials/") and k.endswith("/model.pt")]
    assert len(trial_models) == 2, sorted(objects)
