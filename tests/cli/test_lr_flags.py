"""``--lr`` of ``xmr train`` / ``xmr add-modality``: one rate for all or NAME=RATE per modality, its
precedence over best.json (``--config``), and the line the job prints before training."""

from __future__ import annotations

import json

import pytest
from fake_runs import make_finished_run
from one_line import fails_one_line

from scalable_xmr.cli.extend import job_parser as add_parser
from scalable_xmr.cli.extend import main as add_main
from scalable_xmr.cli.extend import request_from_args as add_request
from scalable_xmr.cli.train import job_parser, request_from_args
from scalable_xmr.cli.train import main as train_main
from scalable_xmr.config import LearningRates, ModalityOverrides, SDMLConfig
from scalable_xmr.errors import InputError

GOOD = [
    ([], LearningRates()),
    (["1e-4"], LearningRates(1e-4)),
    (["0.001"], LearningRates(1e-3)),
    (["image=1e-4", "lidar=5e-4"], LearningRates(None, (("image", 1e-4), ("lidar", 5e-4)))),
    (["1e-4", "image=2e-4"], LearningRates(1e-4, (("image", 2e-4),))),
    (["image=2e-4", "1e-4"], LearningRates(1e-4, (("image", 2e-4),))),  # order does not matter
]

BAD = [
    (["fast"], r"--lr 'fast': 'fast' is not a number \(give RATE or NAME=RATE"),
    (["image=fast"], r"--lr 'image=fast': 'fast' is not a number"),
    (["image=1e-4=2"], r"'1e-4=2' is not a number"),
    (["image="], r"--lr 'image=': a modality's own rate is NAME=RATE, e.g. image=1e-4"),
    (["=1e-4"], r"--lr '=1e-4': a modality's own rate is NAME=RATE"),
    (["0"], r"--lr '0': a learning rate must be a positive number, got 0"),
    (["-1e-4"], r"must be a positive number, got -1e-4"),
    (["image=-1"], r"--lr 'image=-1': a learning rate must be a positive number"),
    (["nan"], r"must be a positive number, got nan"),
    (["inf"], r"must be a positive number, got inf"),
    (["1e-4", "2e-4"], r"--lr gives two rates for every modality \(1e-4 and 2e-4\): give one"),
    (["image=1e-4", "image=2e-4"], r"--lr names modality 'image' twice"),
]


@pytest.mark.parametrize(("values", "expected"), GOOD)
def test_lr_values_parse(values, expected):
    assert LearningRates.parse(values) == expected


@pytest.mark.parametrize(("values", "message"), BAD)
def test_bad_lr_values_are_refused(values, message):
    with pytest.raises(InputError, match=message):
        LearningRates.parse(values)


BEST = {"image": {"lr": 3e-4}, "text": {"lr": 4e-4}, "audio": {"lam": 0.2}}
REF_IMAGE, REF_OTHER = "reference code: image rate", "reference code: non-image rate"
# (flags, best.json, the run's lr) -> {modality: (rate, why)}
PRECEDENCE = [
    ([], {}, None, {"image": (1e-4, REF_IMAGE), "text": (2e-4, REF_OTHER)}),
    ([], BEST, None, {"image": (3e-4, "best.json"), "text": (4e-4, "best.json"), "audio": (2e-4, REF_OTHER)}),
    (["1e-3"], BEST, None, {"image": (1e-3, "--lr"), "text": (1e-3, "--lr"), "audio": (1e-3, "--lr")}),
    (["1e-3", "image=5e-4"], BEST, None, {"image": (5e-4, "--lr image="), "text": (1e-3, "--lr")}),
    (["image=5e-4"], BEST, None, {"image": (5e-4, "--lr image="), "text": (4e-4, "best.json"),
                                   "audio": (2e-4, REF_OTHER)}),
    ([], BEST, 9e-4, {"image": (3e-4, "best.json"), "audio": (9e-4, "the run's lr")}),
    (["video=6e-4"], {}, 9e-4, {"video": (6e-4, "--lr video="), "image": (9e-4, "the run's lr")}),
]


@pytest.mark.parametrize(("flags", "best", "run_lr", "expected"), PRECEDENCE)
def test_precedence_named_flag_then_flag_then_best_json_then_run_then_rule(flags, best, run_lr, expected):
    overrides = ModalityOverrides(best, LearningRates.parse(flags))
    base = SDMLConfig(lr=run_lr)
    for modality, (rate, why) in expected.items():
        assert overrides.lr_choice(base, modality) == (rate, why), modality
        cfg = overrides.config_for(base, modality)
        assert cfg.lr == rate  # what run.json and MLflow record, and the trainer's Adam uses
        assert cfg.lam == best.get(modality, {}).get("lam", 0.5)  # the other overrides still apply


def test_a_bad_lr_in_best_json_is_still_checked():
    with pytest.raises(InputError, match="lr must be positive, got -1"):
        ModalityOverrides({"image": {"lr": -1}}).lr_choice(SDMLConfig(), "image")


def test_lr_line_groups_modalities_of_one_rate_and_reason():
    overrides = ModalityOverrides({"audio": {"lr": 3e-4}}, LearningRates.parse(["text=1e-3"]),
                                  source="--config best.json")
    line = overrides.lr_line(SDMLConfig(), ["image", "text", "audio", "3d", "video"])
    assert line == ("lr: image 1e-4 (reference code: image rate); text 1e-3 (--lr text=); "
                    "audio 3e-4 (--config best.json); 3d, video 2e-4 (reference code: non-image rate)")


def _best_json(tmp_path) -> str:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"model": "sdml", "per_modality": {
        "image": {"config": {"lam": 0.3, "lr": 3e-4}}, "text": {"config": {"lr": 4e-4}}}}))
    return str(path)


def test_train_flags_become_the_request(tmp_path, small_xmedia):
    argv = ["--data", small_xmedia, "--run", str(tmp_path / "run"), "--config", _best_json(tmp_path),
            "--lr", "1e-3", "--lr", "image=5e-4"]
    req = request_from_args(job_parser().parse_args(argv))
    assert req.sdml.lr == 1e-3  # run.json's own rate: what add-modality gives a new modality
    assert req.overrides.lr == LearningRates(1e-3, (("image", 5e-4),))
    assert req.overrides.source == "--config best.json"
    assert req.overrides.config_for(req.sdml, "image").lam == 0.3
    assert [req.overrides.config_for(req.sdml, m).lr for m in ("image", "text")] == [5e-4, 1e-3]
    plain = request_from_args(job_parser().parse_args(argv[:4]))
    assert plain.sdml.lr is None and plain.overrides == ModalityOverrides()


class _Stop(Exception):
    pass


def test_train_prints_each_rate_and_why_before_ray_starts(tmp_path, capsys, small_xmedia, monkeypatch):
    """The line comes after every check and before the cluster is touched (here: stopped there)."""
    import ray

    started = ray.is_initialized()

    def stop(address=None):
        raise _Stop

    monkeypatch.setattr("scalable_xmr.runs.session.connect", stop)
    argv = ["--data", small_xmedia, "--run", str(tmp_path / "run"), "--no-tracking", "--no-progress",
            "--config", _best_json(tmp_path), "--lr", "audio=5e-4", "--modality", "image",
            "--modality", "text", "--modality", "audio", "--modality", "video"]
    with pytest.raises(_Stop):
        train_main(argv)
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "lr: image 3e-4 (--config best.json); text 4e-4 (--config best.json); audio 5e-4 (--lr audio=); "
        "video 2e-4 (reference code: non-image rate)")
    with pytest.raises(_Stop):
        train_main([*argv[:6], "--lr", "1e-3"])
    assert capsys.readouterr().err.splitlines()[0] == "lr: image, text, audio, 3d, video 1e-3 (--lr)"
    assert ray.is_initialized() == started


def test_train_refuses_bad_lr_flags_before_anything_is_written(tmp_path, capsys, small_xmedia):
    run = tmp_path / "run"
    base = ["--data", small_xmedia, "--run", str(run), "--no-tracking", "--no-progress"]
    cases = [
        (["--lr", "smell=1e-4"], f"--lr names modality 'smell', which is not in dataset {small_xmedia} "
                                 "(it has: image, text, audio, 3d, video)"),
        (["--modality", "image", "--lr", "text=1e-4"],
         "--lr names modality 'text', which this job does not train (--modality: image)"),
        (["--lr", "fast"], "--lr 'fast': 'fast' is not a number"),
        (["--lr", "image=0"], "--lr 'image=0': a learning rate must be a positive number, got 0"),
        (["--lr", "image="], "--lr 'image=': a modality's own rate is NAME=RATE"),
        (["--lr", "1e-4", "--lr", "2e-4"], "--lr gives two rates for every modality"),
    ]
    for argv, message in cases:
        fails_one_line(train_main, capsys, [*base, *argv], message)
        assert not run.exists()


@pytest.fixture
def fake_run(tmp_path, small_xmedia):
    return make_finished_run(tmp_path / "run", small_xmedia, ("image", "text"), SDMLConfig(dim=32, lr=7e-4))


def test_add_modality_takes_per_modality_rates(tmp_path, fake_run, small_xmedia):
    argv = ["--run", str(fake_run), "--modality", "image", "--modality", "audio", "--modality", "video",
            "--data", small_xmedia, "--config", _best_json(tmp_path), "--lr", "video=1e-3", "--epochs", "3"]
    req = add_request(add_parser().parse_args(argv))
    base = SDMLConfig(dim=32, lr=7e-4)  # the run's own settings
    assert req.overrides.lr_line(base, req.modalities) == (
        "lr: image 3e-4 (--config best.json); audio 7e-4 (the run's lr); video 1e-3 (--lr video=)")
    assert [req.overrides.config_for(base, m).epochs for m in req.modalities] == [3, 3, 3]
    req = add_request(add_parser().parse_args([*argv, "--lr", "2e-3"]))
    assert [req.overrides.config_for(base, m).lr for m in req.modalities] == [2e-3, 2e-3, 1e-3]


def test_add_modality_refuses_a_rate_for_a_modality_it_does_not_add(capsys, fake_run, small_xmedia):
    argv = ["--run", str(fake_run), "--no-progress", "--modality", "audio", "--data", small_xmedia]
    fails_one_line(add_main, capsys, [*argv, "--lr", "text=1e-4"],
                   "--lr names modality 'text', which this job does not train (--modality: audio)")
    fails_one_line(add_main, capsys, [*argv, "--lr", "audio=x"], "--lr 'audio=x': 'x' is not a number")
