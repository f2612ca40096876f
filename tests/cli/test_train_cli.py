"""Bad input to the SDML job: one readable line, non-zero exit, nothing left behind as if complete."""


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
