"""``--workers-per-modality`` / ``--gpus-per-worker`` of ``xmr train`` (#26): bad values are one line
and exit 2 before Ray starts, nothing written; a resume with another W is refused by name."""

from __future__ import annotations

import json

import pytest
from fake_runs import make_finished_run
from one_line import fails_one_line

from scalable_xmr.cli.train import job_parser, request_from_args
from scalable_xmr.cli.train import main as train_main
from scalable_xmr.config import ResourceConfig, SDMLConfig
from scalable_xmr.distributed.cluster import workers_problem
from scalable_xmr.errors import InputError


class _NoRay(Exception):
    pass


@pytest.fixture
def no_ray(monkeypatch):
    """Any of these checks that reached the cluster would be too late: connecting fails the test."""
    def connect(address=None):
        raise _NoRay("connect() was called")

    monkeypatch.setattr("scalable_xmr.runs.session.connect", connect)


def _base(tmp_path, data):
    return ["--data", data, "--run", str(tmp_path / "run"), "--no-tracking", "--no-progress",
            "--dim", "32", "--batch-size", "20", "--epochs", "2"]


def test_flags_become_the_request(tmp_path, small_xmedia):
    req = request_from_args(job_parser().parse_args(
        _base(tmp_path, small_xmedia) + ["--workers-per-modality", "2", "--gpus-per-worker", "0"]))
    assert req.resources.workers_per_modality == 2 and req.resources.gpus_per_worker == 0
    plain = request_from_args(job_parser().parse_args(_base(tmp_path, small_xmedia)))
    assert plain.resources.workers_per_modality == 1 and plain.resources.gpus_per_worker is None


@pytest.mark.parametrize("argv, message", [
    (["--workers-per-modality", "0"],
     "argument --workers-per-modality: must be a whole number of workers >= 1, got '0'"),
    (["--workers-per-modality", "-2"], "must be a whole number of workers >= 1, got '-2'"),
    (["--workers-per-modality", "1.5"], "must be a whole number of workers >= 1, got '1.5'"),
    (["--workers-per-modality", "two"], "must be a whole number of workers >= 1, got 'two'"),
    (["--gpus-per-worker", "0.5"], "argument --gpus-per-worker: invalid choice: 0.5"),
])
def test_bad_values_are_refused_by_the_parser(tmp_path, capsys, small_xmedia, argv, message):
    with pytest.raises(SystemExit) as e:
        train_main(_base(tmp_path, small_xmedia) + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"workers_per_modality": 0}, "--workers-per-modality must be a whole number >= 1, got 0"),
    ({"workers_per_modality": 2.0}, "got 2.0"),
    ({"workers_per_modality": True}, "got True"),
    ({"workers_per_modality": 2, "strategy": "joint"}, "--workers-per-modality 2 with --strategy joint"),
    ({"gpus_per_worker": 0.5}, "--gpus-per-worker must be 0 or 1"),
])
def test_resource_config_checks_the_workers(kwargs, match):
    with pytest.raises(InputError, match=match):
        ResourceConfig(**kwargs)


def test_joint_with_workers_is_one_line(tmp_path, capsys, small_xmedia, no_ray):
    fails_one_line(train_main, capsys, _base(tmp_path, small_xmedia) + [
        "--strategy", "joint", "--workers-per-modality", "2"],
        "--workers-per-modality 2 with --strategy joint: the joint strategy trains every modality in one "
        "process")
    assert not (tmp_path / "run").exists()


def test_a_batch_smaller_than_the_workers_is_one_line_per_modality_config(tmp_path, capsys, small_xmedia,
                                                                          no_ray):
    best = tmp_path / "best.json"  # text's own batch size (best.json) is the one too small
    best.write_text(json.dumps({"model": "sdml", "per_modality": {"text": {"config": {"batch_size": 3}}}}))
    fails_one_line(train_main, capsys, _base(tmp_path, small_xmedia) + [
        "--workers-per-modality", "4", "--config", str(best), "--modality", "image", "--modality", "text"],
        "--workers-per-modality 4: modality 'text' has batch size 3, and each worker takes a slice of every "
        "batch; use at most 3 workers or a larger --batch-size")
    assert not (tmp_path / "run").exists()


def test_resume_with_another_worker_count_is_refused_naming_both(tmp_path, capsys, small_xmedia, no_ray):
    cfg = SDMLConfig(dim=32, batch_size=20, epochs=2)
    run = make_finished_run(tmp_path / "run", small_xmedia, ("image", "text"), cfg, record_configs=True)
    meta = json.loads((run / "run.json").read_text())
    meta["status"] = "failed"
    meta["modalities"]["text"].update(status="failed", workers=2)
    (run / "run.json").write_text(json.dumps(meta))
    before = (run / "run.json").read_text()
    fails_one_line(train_main, capsys, _base(tmp_path, small_xmedia) + [
        "--resume", "--modality", "image", "--modality", "text"],
        "modality 'text' started training with --workers-per-modality 2, --resume asks for 1; resume with "
        "--workers-per-modality 2 or pass --overwrite to train again")
    assert (run / "run.json").read_text() == before


TOTAL, DESCRIBED = {"CPU": 4.0, "GPU": 2.0}, "4 CPU, 2 GPU, 1 node(s)"


@pytest.mark.parametrize("workers, gpus, cpus, problem", [
    (2, 1, None, None),
    (3, 1, None, "--workers-per-modality 3 with --gpus-per-worker 1 needs 3 GPUs; this cluster has 4 "
                 "CPU, 2 GPU, 1 node(s): lower --workers-per-modality or pass --gpus-per-worker 0"),
    (4, 0, None, None),
    (5, 0, None, "--workers-per-modality 5: this cluster has 4 CPU, 2 GPU, 1 node(s), fewer CPUs than "
                 "workers"),
    (8, 0, 2.0, None),  # a quarter CPU each, as asked
    (2, 0, 6.0, "--cpus-per-modality 6: this cluster has 4 CPU"),
])
def test_workers_the_cluster_can_never_place(workers, gpus, cpus, problem):
    got = workers_problem(workers, gpus, cpus, TOTAL, DESCRIBED)
    assert got == problem if problem is None else problem in got


# ---- --stream (#26 item 2): the same door ----------------------------------------------------------
def test_stream_flag_becomes_the_request_and_is_off_by_default(tmp_path, small_xmedia):
    req = request_from_args(job_parser().parse_args(_base(tmp_path, small_xmedia) + ["--stream"]))
    assert req.resources.stream is True and req.resources.workers_per_modality == 1
    assert request_from_args(job_parser().parse_args(_base(tmp_path, small_xmedia))).resources.stream is False


def test_stream_with_joint_is_one_line(tmp_path, capsys, small_xmedia, no_ray):
    with pytest.raises(InputError, match="--stream with --strategy joint"):
        ResourceConfig(strategy="joint", stream=True)
    fails_one_line(train_main, capsys, _base(tmp_path, small_xmedia) + ["--strategy", "joint", "--stream"],
                   "--stream with --strategy joint: the joint strategy holds every modality in one process")
    assert not (tmp_path / "run").exists()


def test_stream_on_a_table_without_the_required_columns_is_one_line(tmp_path, capsys, small_xmedia, no_ray):
    import shutil

    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(small_xmedia, data)
    table = pq.read_table(data / "audio.parquet")
    pq.write_table(table.drop_columns(["labels"]), data / "audio.parquet")
    fails_one_line(train_main, capsys, [*_base(tmp_path, str(data))[2:], "--data", str(data), "--stream",
                                        "--modality", "audio"], "audio.parquet: missing column 'labels'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("started, asked", [(True, []), (False, ["--stream"])])
def test_resume_with_another_stream_setting_is_refused(tmp_path, capsys, small_xmedia, no_ray, started,
                                                       asked):
    cfg = SDMLConfig(dim=32, batch_size=20, epochs=2)
    run = make_finished_run(tmp_path / "run", small_xmedia, ("image", "text"), cfg, record_configs=True)
    meta = json.loads((run / "run.json").read_text())
    meta["status"] = "failed"
    meta["modalities"]["text"].update(status="failed", workers=1, stream=started)
    (run / "run.json").write_text(json.dumps(meta))
    before = (run / "run.json").read_text()
    was, now = ("with", "without") if started else ("without", "with")
    fails_one_line(train_main, capsys, _base(tmp_path, small_xmedia) + [
        "--resume", "--modality", "image", "--modality", "text", *asked],
        f"modality 'text' started training {was} --stream, --resume asks {now} it; resume as it started "
        "or pass --overwrite to train again")
    assert (run / "run.json").read_text() == before
