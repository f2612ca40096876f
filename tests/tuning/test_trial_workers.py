"""Sweeps with ``--workers-per-modality W`` (#26 item 4) without Ray: how many trials fit at once,
the start line, and the flags refused at the door (one line, exit 2, before Ray starts, nothing
written)."""

from __future__ import annotations

import pytest
from one_line import fails_one_line

from scalable_xmr.errors import InputError
from scalable_xmr.tuning.request import SweepRequest, check_request
from scalable_xmr.tuning.trial_workers import (
    DRIVER_CPUS,
    TrialWorkers,
    plan_trial_workers,
    trials_that_fit,
    workers_line,
)

DESCRIBED = "described cluster"


@pytest.mark.parametrize("total, per_trial, fit", [
    ({"CPU": 2.0}, {"CPU": 1.25}, 1),  # 2 workers x 0.5 CPU + the trial's 0.25
    ({"CPU": 2.0}, {"CPU": 0.75}, 2),  # 2 workers x 0.25 CPU + 0.25
    ({"CPU": 1.0}, {"CPU": 0.75 + 0.25}, 1),  # exactly one, whatever the float rounding
    ({"CPU": 2.0}, {"CPU": 2.25}, 0),
    ({"CPU": 64.0, "GPU": 8.0}, {"CPU": 4.25, "GPU": 4.0}, 2),  # the GPUs are the scarce resource
    ({"CPU": 8.0, "GPU": 8.0}, {"CPU": 4.25, "GPU": 4.0}, 1),  # the CPUs are
    ({"CPU": 8.0}, {"CPU": 2.25, "GPU": 2.0}, 0),  # no GPU at all
])
def test_trials_that_fit_is_the_scarcest_resource(total, per_trial, fit):
    assert trials_that_fit(total, per_trial) == fit


def test_a_plan_counts_the_workers_and_the_trial_itself():
    plan = plan_trial_workers(2, 0.5, 0.0, None, {"CPU": 2.0, "GPU": 0.0}, DESCRIBED)
    assert plan == TrialWorkers(2, {"CPU": 0.5}, DRIVER_CPUS, 1, 1)
    assert plan.per_trial == {"CPU": 2 * 0.5 + DRIVER_CPUS}
    gpus = plan_trial_workers(4, 1.0, 1.0, None, {"CPU": 64.0, "GPU": 8.0}, DESCRIBED)
    assert (gpus.fit, gpus.concurrent, gpus.per_trial) == (2, 2, {"CPU": 4.25, "GPU": 4.0})
    capped = plan_trial_workers(2, 1.0, 0.0, 3, {"CPU": 32.0}, DESCRIBED)
    assert (capped.fit, capped.concurrent) == (14, 3)
    assert TrialWorkers.from_json(capped.to_json()) == capped  # sweep.json keeps it for --resume


def test_a_trial_the_cluster_can_never_hold_is_one_line():
    with pytest.raises(InputError, match=r"--workers-per-modality 2: a trial needs 2.25 CPUs \(2 workers x "
                       r"--cpus-per-trial 1 \+ 0.25 for the trial itself\); this cluster has described "
                       r"cluster: lower --cpus-per-trial or --workers-per-modality"):
        plan_trial_workers(2, 1.0, 0.0, None, {"CPU": 2.0}, DESCRIBED)
    with pytest.raises(InputError, match=r"--workers-per-modality 2 with --gpus-per-worker 1 needs 2 GPUs a "
                       r"trial; this cluster has described cluster"):
        plan_trial_workers(2, 1.0, 1.0, None, {"CPU": 8.0, "GPU": 1.0}, DESCRIBED)
    # an autoscaling cluster may still grow: one trial at a time
    assert plan_trial_workers(2, 1.0, 1.0, None, {"CPU": 8.0}, DESCRIBED, autoscale=True).concurrent == 1


def test_the_start_line_says_w_per_modality_and_the_trials_at_a_time():
    line = workers_line(TrialWorkers(2, {"CPU": 1.0, "GPU": 1.0}, 0.25, 4, 2), ["image", "text"], DESCRIBED)
    assert line == ("workers: image 2, text 2 per trial (Ray Train in each Tune trial; DDP, nccl; 1 CPU, "
                    "1 GPU each, 0.25 CPU for the trial itself): 2 trials at a time (--max-concurrent; 4 "
                    "would fit) on described cluster")


def _req(**kw) -> SweepRequest:
    return SweepRequest(**{"model": "sdml", "dataset_uri": "unused", **kw})


@pytest.mark.parametrize("kwargs, message", [
    ({"workers_per_modality": 0}, "--workers-per-modality must be a whole number >= 1, got 0"),
    ({"workers_per_modality": 1.5}, "--workers-per-modality must be a whole number >= 1, got 1.5"),
    ({"gpus_per_worker": 0.5}, "--gpus-per-worker must be 0 or 1"),
    ({"workers_per_modality": 2, "population": 4}, "--population 4 with --workers-per-modality 2: a "
     "data-parallel trial trains one configuration"),
    ({"workers_per_modality": 2, "model": "mtfn"}, "--workers-per-modality applies to --model sdml only"),
    ({"workers_per_modality": 2, "gpus_per_trial": 1.0}, "--gpus-per-trial 1 with --workers-per-modality 2"),
    ({"workers_per_modality": 8, "base": {"batch_size": 4}}, "--workers-per-modality 8: the batch size is "
     "4, and each worker takes a slice of every batch"),
])
def test_the_request_refuses_what_a_data_parallel_trial_cannot_do(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_request(_req(**kwargs))


@pytest.mark.parametrize("flag, text", [("--grid", "batch_size=2,50"), ("--range", "batch_size=3:50")])
def test_swept_batch_sizes_under_w_are_refused(flag, text):
    from scalable_xmr.tuning.request import check_base
    from scalable_xmr.tuning.space import build_space

    space = build_space("sdml", **({"grids": [text]} if flag == "--grid" else {"ranges": [text]}))
    with pytest.raises(InputError, match="--workers-per-modality 4: the swept batch sizes go down to "):
        check_base(_req(workers_per_modality=4), space)
    check_base(_req(workers_per_modality=2), space)
    check_base(_req(), space)


def test_one_worker_keeps_every_single_worker_option():
    check_request(_req(population=4, gpus_per_trial=1.0))  # W = 1: today's sweep, untouched
    check_request(_req(workers_per_modality=2, gpus_per_worker=1.0))


@pytest.mark.parametrize("argv, message", [
    (["--workers-per-modality", "2", "--population", "4"],
     "--population 4 with --workers-per-modality 2: a data-parallel trial trains one configuration; drop "
     "--population or use --workers-per-modality 1"),
    (["--model", "vse", "--workers-per-modality", "2"],
     "--workers-per-modality applies to --model sdml only"),
])
def test_bad_worker_flags_are_one_line_before_ray(tmp_path, capsys, monkeypatch, argv, message):
    from scalable_xmr.cli.sweep import main

    def no_ray(address=None):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("scalable_xmr.tuning.sweep.connect", no_ray)
    model = [] if "--model" in argv else ["--model", "sdml"]
    fails_one_line(main, capsys, [*model, *argv, "--data", str(tmp_path), "--storage", str(tmp_path / "s")],
                   message)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value, message", [
    ("0", "argument --workers-per-modality: must be a whole number of workers >= 1, got '0'"),
    ("two", "must be a whole number of workers >= 1, got 'two'"),
])
def test_a_worker_count_below_one_is_refused_by_the_parser(tmp_path, capsys, value, message):
    from scalable_xmr.cli.sweep import main

    with pytest.raises(SystemExit) as e:
        main(["--model", "sdml", "--workers-per-modality", value, "--data", str(tmp_path),
              "--storage", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1
    assert not (tmp_path / "s").exists()


def test_a_finished_trials_train_group_is_released_on_the_driver(ray_local):
    """A trial Tune ends (ASHA) leaves its Train workers' placement group to the job: the driver's
    callback removes the one the trial reported, once; a trial without one is left alone."""
    from types import SimpleNamespace

    from ray.util.placement_group import placement_group, placement_group_table

    from scalable_xmr.tuning.trial_workers import (
        PLACEMENT_GROUP_KEY,
        ReleaseTrainGroups,
        release_placement_group,
    )

    group = placement_group([{"CPU": 0.01}, {"CPU": 0.01}])
    ray_local.get(group.ready(), timeout=60)
    trial = SimpleNamespace(last_result={PLACEMENT_GROUP_KEY: group.id.hex(), "epoch": 1})
    ReleaseTrainGroups().on_trial_complete(0, [], trial)
    assert placement_group_table(group)["state"] == "REMOVED"
    assert release_placement_group(group.id.hex()) is False  # gone already: nothing to do
    ReleaseTrainGroups().on_trial_error(0, [], SimpleNamespace(last_result={"epoch": 1}))
