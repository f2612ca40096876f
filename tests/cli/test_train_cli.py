"""Bad input to the SDML job: one readable line, non-zero exit, nothing left behind as if complete."""


import pytest
from one_line import fails_one_line

from scalable_xmr.cli.train import job_parser
from scalable_xmr.cli.train import main as train_main


def _fails(capsys, argv, message):
    fails_one_line(train_main, capsys, argv, message)


def test_bad_arguments_fail_before_anything_is_written(tmp_path, capsys, small_xmedia):
    run = tmp_path / "run"
    base = ["--data", small_xmedia, "--run", str(run), "--no-tracking", "--no-progress"]
    cases = [
        (["--data", str(tmp_path / "nope"), "--run", str(run)], "dataset path does not exist"),
        (["--data", f"file://{tmp_path}/nope", "--run", str(run)],
         f"--data file://{tmp_path}/nope: dataset path does not exist"),
        ([*base, "--lam", "1.5"], "lam must be in [0, 1], got 1.5"),
        ([*base, "--lam", "-0.1"], "lam must be in [0, 1], got -0.1"),
        ([*base, "--epochs", "0"], "epochs must be a positive integer, got 0"),
        ([*base, "--batch-size", "-5"], "batch-size must be a positive integer, got -5"),
        ([*base, "--modality", "smell"], "modality 'smell' not in dataset"),
        ([*base, "--top-k", "0"], "--top-k must be >= 1"),
        ([*base, "--top-k", "3", "--top-k-no-relevant", "maybe"],
         "--top-k-no-relevant must be one of zero, skip, got 'maybe'"),
        (["--data", small_xmedia, "--run", str(tmp_path / "afile" / "run")],
         f"--run {tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a file, not a directory"),
    ]
    (tmp_path / "afile").write_text("not a directory")
    for argv, message in cases:
        _fails(capsys, argv, message)
        assert not run.exists()


def test_a_modality_smaller_than_one_batch_fails_before_ray_starts(tmp_path, capsys, small_xmedia):
    """image and text have 120 train rows, the other modalities 100: with batch 110 the first
    modality that cannot train is named, with its split, rows and batch, before any actor runs."""
    import ray

    started = ray.is_initialized()
    run = tmp_path / "run"
    _fails(capsys, ["--data", small_xmedia, "--run", str(run), "--batch-size", "110", "--no-tracking"],
           "modality 'audio' (")
    _fails(capsys, ["--data", small_xmedia, "--run", str(run), "--batch-size", "110", "--no-tracking"],
           "train split has 100 rows, fewer than one batch of 110; lower --batch-size to at most 100")
    assert not run.exists()
    assert ray.is_initialized() == started  # the check ran before Ray was started


def test_small_synthetic_scale_fits_the_default_batch():
    from scalable_xmr.config import SDMLConfig
    from scalable_xmr.data.modality.synthetic import SHAPES

    for modality, (_, (n_train, n_val, n_test)) in SHAPES["small"].items():
        assert n_train >= SDMLConfig().batch_size and n_val and n_test, modality


def test_not_a_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["--data", str(tmp_path / "empty"), "--run", str(tmp_path / "run")], "dataset.json")
    assert not (tmp_path / "run").exists()


def test_help_explains_every_flag():
    text = job_parser().format_help()
    for flag in ["--data", "--mat", "--run", "--epochs", "--lam", "--lr", "--dim", "--batch-size", "--seed",
                 "--strategy", "--gpus-per-modality", "--tracking-uri", "--experiment", "--address",
                 "--resume", "--overwrite", "--config", "--demo"]:
        assert flag in text
    for action in job_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_os_errors_are_one_line_naming_the_path(capsys):
    """A converter writing under a file (or a full, read-only disk) gave a raw OSError traceback."""
    from scalable_xmr.cli import run_cli

    def write_under_a_file():
        raise IsADirectoryError(21, "Is a directory", "/data/out")

    assert run_cli(write_under_a_file) == 2
    assert capsys.readouterr().err == "xmr: error: /data/out: Is a directory\n"


def test_patience_and_keep_checkpoints_reach_every_training_request(tmp_path, small_xmedia, small_pairs):
    from scalable_xmr.cli import branch, extend, train

    run = str(tmp_path / "run")
    req = train.request_from_args(job_parser().parse_args(
        ["--data", small_xmedia, "--run", run, "--patience", "20", "--keep-checkpoints"]))
    assert req.sdml.patience == 20 and req.keep_checkpoints
    plain = train.request_from_args(job_parser().parse_args(["--data", small_xmedia, "--run", run]))
    assert plain.sdml.patience is None and not plain.keep_checkpoints  # off by default
    req = branch.request_from_args(branch.job_parser().parse_args(
        ["--data", small_pairs, "--run", run, "--model", "vse", "--model", "mtfn", "--patience", "3",
         "--keep-checkpoints"]))
    assert [t.patience for t in req.trainers.values()] == [3, 3] and req.keep_checkpoints
    req = extend.request_from_args(extend.job_parser().parse_args(
        ["--run", run, "--modality", "video", "--data", small_xmedia, "--patience", "4",
         "--keep-checkpoints"]))
    assert req.overrides.per_modality["video"]["patience"] == 4 and req.keep_checkpoints
    req = extend.request_from_args(extend.job_parser().parse_args(
        ["--run", run, "--modality", "video", "--data", small_xmedia]))
    assert "patience" not in req.overrides.per_modality["video"]  # the run's own


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "ten"])
@pytest.mark.parametrize("command", ["train", "train-pairs", "add-modality"])
def test_bad_patience_is_one_line_before_anything_is_written(tmp_path, capsys, command, value):
    from scalable_xmr.cli import main as xmr

    argv = [command, "--run", str(tmp_path / "run"), "--patience", value]
    if command == "add-modality":
        argv += ["--modality", "video", "--data", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        xmr(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"argument --patience: must be a whole number of epochs >= 1, got '{value}'" in err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1
    assert not any(tmp_path.iterdir())


def test_footer_lines_for_epochs_and_training_state(capsys):
    from scalable_xmr.cli.train import print_training_notes
    from scalable_xmr.sdml.trainer import TrainResult

    early = [{"epoch": e, "loss_val_label": 1.0 if e == 2 else 2.0} for e in range(1, 31)]
    results = {"image": TrainResult("image", 2, 1.0, 30, history=early, planned_epochs=30),
               "text": TrainResult("text", 9, 1.0, 12, planned_epochs=30, patience=3, stopped_early=12),
               "audio": TrainResult("audio", 30, 1.0, 30, planned_epochs=30,
                                    history=[{"loss_val_label": 30.0 - e} for e in range(30)])}
    print_training_notes(results, "removed 6 files, 1.55 GB (modalities/*/checkpoints/; --keep-checkpoints "
                                  "keeps them)")
    assert capsys.readouterr().out.splitlines() == [
        "epochs        : image: best epoch 2 of 30; --patience 3 would have stopped at epoch 5",
        "epochs        : text: stopped early at epoch 12 of 30 (best epoch 9, --patience 3)",
        "training state: removed 6 files, 1.55 GB (modalities/*/checkpoints/; --keep-checkpoints keeps them)"]
