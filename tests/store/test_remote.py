"""Runs on object storage: the local mirror, uploads after each atomic write, pulls into a fresh
mirror, and the bad-input lines, against moto's S3 server on 127.0.0.1 (started here)."""

from __future__ import annotations

import os
import time

import pyarrow.fs as pafs
import pytest
from servers import MotoServer

from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_write_json, atomic_write_text
from scalable_xmr.store import remote, torchfile
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore

BUCKET = "xmr-test"


def sdml_meta(**kw) -> RunMeta:
    return RunMeta(kind="sdml", dataset={"uri": "/d", "name": "d"}, modalities={"a": {"status": "pending"}},
                   **kw)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(s3, tmp_path, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache-a"))
    return s3


def bucket_fs(s3) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=s3.endpoint, access_key="testing", secret_key="testing",
                             region="us-east-1", scheme="http")


def objects(s3, prefix: str) -> dict[str, bytes]:
    fs = bucket_fs(s3)
    infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    out = {}
    for i in infos:
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as f:
                out[i.path[len(BUCKET) + len(prefix) + 2:]] = f.read()
    return out


def test_every_atomic_write_is_uploaded_and_read_back_in_a_fresh_mirror(env, tmp_path, monkeypatch):
    uri = f"s3://{BUCKET}/runs/a"
    store = RunStore(uri)
    assert store.uri == uri and store.root == tmp_path / "cache-a" / "runs" / "s3" / BUCKET / "runs" / "a"
    store.root.mkdir(parents=True)
    store.write(sdml_meta(projection={"sha256": "x"}))
    atomic_write_text(store.root / "modalities" / "a" / "train_log.json", "{}\n")
    ckpt = store.checkpoint_path("a")
    uploads = []
    real_upload = remote._upload
    monkeypatch.setattr(remote, "_upload", lambda m, p: (uploads.append(p.name), real_upload(m, p))[1])
    torchfile.save_rotating({"epoch": 1}, ckpt)
    torchfile.save_rotating({"epoch": 2}, ckpt)  # the first becomes last.pt.prev, in the bucket too
    assert uploads == ["last.pt", "last.pt"]  # .prev is a copy in the bucket, not a second upload
    (store.root / ".lock").write_text("held")  # the job lock stays on the mirror
    got = objects(env, "runs/a")
    assert set(got) == {"run.json", "modalities/a/train_log.json", "modalities/a/checkpoints/last.pt",
                        "modalities/a/checkpoints/last.pt.prev"}
    assert got["run.json"] == store.run_json.read_bytes()
    # Another node (another cache) opening the URI sees the same run.
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache-b"))
    fresh = RunStore(uri)
    assert fresh.root != store.root and fresh.read() == store.read()
    assert torchfile.load(fresh.checkpoint_path("a")) == {"epoch": 2}
    assert torchfile.load(torchfile.previous(fresh.checkpoint_path("a"))) == {"epoch": 1}
    assert not (fresh.root / ".lock").exists()


def test_a_pull_fetches_newer_objects_and_keeps_newer_local_files(env, tmp_path):
    uri = f"s3://{BUCKET}/runs/b"
    store = RunStore(uri)
    atomic_write_json(store.root / "x.json", {"v": 1})
    atomic_write_json(store.root / "y.json", {"v": 1})
    m = remote.mirror(uri)
    assert remote.pull(m) == 0  # what this machine uploaded is not fetched back
    time.sleep(1.1)  # object times have one-second resolution on some servers
    with bucket_fs(env).open_output_stream(f"{BUCKET}/runs/b/x.json") as f:
        f.write(b'{"v": 2}')  # another node rewrote x.json
    (store.root / "y.json").write_text('{"v": 3}')  # and this one is writing y.json (newer here)
    assert remote.pull(m) == 1
    assert (store.root / "x.json").read_text() == '{"v": 2}'
    assert (store.root / "y.json").read_text() == '{"v": 3}'
    (store.root / "stale.json").write_text("{}")  # not in the bucket: gone after a pruning refresh
    store.refresh()
    assert not (store.root / "stale.json").exists() and (store.root / "x.json").is_file()


def test_clearing_a_run_for_overwrite_deletes_its_objects(env):
    store = RunStore(f"s3://{BUCKET}/runs/c")
    atomic_write_json(store.root / "run.json", {})
    atomic_write_json(store.root / "plots" / "p.json", {})
    assert set(objects(env, "runs/c")) == {"run.json", "plots/p.json"}
    store._clear()
    assert objects(env, "runs/c") == {}


def test_a_mirror_path_stands_for_its_uri(env):
    store = RunStore(f"s3://{BUCKET}/runs/d")
    sub = store.root / ".staging" / "add-1"
    assert remote.uri_of(sub) == f"s3://{BUCKET}/runs/d/.staging/add-1"
    assert RunStore(sub).uri == f"s3://{BUCKET}/runs/d/.staging/add-1"
    assert remote.uri_of(env.root) == str(env.root)  # outside every mirror: itself


def test_a_run_at_the_bucket_root_is_refused(env):
    with pytest.raises(InputError, match=rf"--run s3://{BUCKET}: give a key under the bucket"):
        RunStore(f"s3://{BUCKET}/")


def test_a_bucket_that_does_not_exist_is_one_line_naming_the_uri(env):
    with pytest.raises(InputError, match=r"--run s3://no-such-bucket/runs/x: bucket 'no-such-bucket' "
                                         r"does not exist"):
        RunStore("s3://no-such-bucket/runs/x")


def test_no_credentials_is_one_line_naming_the_uri(env, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"--run s3://b/runs/x: no S3 credentials configured"):
        RunStore("s3://b/runs/x")
    assert os.environ["AWS_ENDPOINT_URL"]  # it is the credentials that are missing


def test_cli_refuses_a_missing_bucket_and_missing_credentials_in_one_line(env, small_xmedia, capsys,
                                                                         monkeypatch, tmp_path):
    from one_line import fails_one_line

    from scalable_xmr.cli.train import main

    argv = ["--data", small_xmedia, "--epochs", "1", "--no-progress", "--run"]
    fails_one_line(main, capsys, [*argv, "s3://no-such-bucket/runs/x"],
                   "s3://no-such-bucket/runs/x: bucket 'no-such-bucket' does not exist")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    fails_one_line(main, capsys, [*argv, f"s3://{BUCKET}/runs/y"],
                   f"s3://{BUCKET}/runs/y: no S3 credentials configured")
    assert not (tmp_path / "cache-a").exists()  # nothing written, not even a mirror


def test_a_modality_actor_pulls_the_run_top_and_its_own_modality_only(env, tmp_path, monkeypatch):
    uri = f"s3://{BUCKET}/runs/per-modality"
    store = RunStore(uri)
    store.root.mkdir(parents=True)
    store.write(sdml_meta())
    atomic_write_text(store.projection_path, "P")
    for m in ("a", "b"):
        torchfile.save_rotating({"modality": m}, store.checkpoint_path(m))
        atomic_write_text(store.modality_dir(m) / "embeddings" / "val.parquet", m)
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "node-2"))  # another node
    actor = RunStore(uri, modality="a")
    files = sorted(p.relative_to(actor.root).as_posix() for p in actor.root.rglob("*") if p.is_file())
    assert files == ["modalities/a/checkpoints/last.pt", "modalities/a/embeddings/val.parquet",
                     "projection.arrow", "run.json"]
    assert torchfile.load(actor.checkpoint_path("a")) == {"modality": "a"}
    whole = RunStore(uri)  # the job's own view: everything
    assert (whole.modality_dir("b") / "embeddings" / "val.parquet").read_text() == "b"
    with pytest.raises(ValueError, match="prune needs the whole run"):
        remote.pull(remote.mirror(uri), prune=True, subdirs=("modalities/a",))


def test_dropping_training_state_deletes_it_in_the_bucket_too(env, tmp_path, monkeypatch):
    """A finished run's checkpoints go from the bucket as well -- also one the mirror lacks (an
    actor on another node uploaded it) -- and nothing else does."""
    from scalable_xmr.store import training_state

    uri = f"s3://{BUCKET}/runs/slim"
    store = RunStore(uri)
    store.root.mkdir(parents=True)
    store.write(sdml_meta())
    for m in ("a", "b"):
        torchfile.save_rotating({"epoch": 1}, store.checkpoint_path(m))
        torchfile.save_rotating({"epoch": 2}, store.checkpoint_path(m))
        torchfile.save({"w": m}, store.model_path(m))
    store.checkpoint_path("b").unlink()  # in the bucket, not in this mirror
    assert {f"modalities/{m}/checkpoints/last.pt" for m in "ab"} <= set(objects(env, "runs/slim"))
    dropped = training_state.drop([store.checkpoint_path(m).parent for m in "ab"])
    assert dropped.files == 3  # what this mirror held: a's two, b's .prev
    assert set(objects(env, "runs/slim")) == {"run.json", "modalities/a/model.pt", "modalities/b/model.pt"}
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache-b"))  # another machine reads it back
    fresh = RunStore(uri)
    assert not any(p.name.startswith("last.pt") for p in fresh.root.rglob("*"))


def test_a_ray_train_run_stays_in_the_bucket_and_goes_with_the_training_state(env, tmp_path):
    """A data-parallel modality's Ray Train run is written to the bucket by Ray Train itself
    (sdml/data_parallel.py): opening the run does not download it, and dropping the training state
    deletes it there."""
    from scalable_xmr.store import training_state

    uri = f"s3://{BUCKET}/runs/ddp"
    store = RunStore(uri)
    store.root.mkdir(parents=True)
    store.write(sdml_meta())
    fs = bucket_fs(env)
    ray_train = f"{BUCKET}/runs/ddp/modalities/a/checkpoints/ray-train"
    for name in ("checkpoint_2026-12-07_10-00-00/last.pt", "checkpoint_manager_snapshot.json"):
        with fs.open_output_stream(f"{ray_train}/{name}") as f:
            f.write(b"state")
    fresh = RunStore(uri, modality="a")  # a worker's view, and the job's
    assert not (fresh.checkpoint_path("a").parent / "ray-train").exists()
    assert not RunStore(uri).checkpoint_path("a").parent.exists()
    training_state.drop([store.checkpoint_path("a").parent])
    assert set(objects(env, "runs/ddp")) == {"run.json"}
