"""Bad input to the add-modality job: one readable line, exit 2, and the run left byte-identical.

The run here is built by hand (run.json, P, embeddings, metrics; no training): every check of the
job happens before Ray is touched, so none of these tests needs a cluster.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_runs import make_finished_run

from scalable_xmr.cli.extend import job_parser, request_from_args
from scalable_xmr.cli.extend import main as add_main
from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import DatasetInfo, ModalityInfo, open_dataset, write_dataset
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore

TINY = SDMLConfig(dim=32, hidden=64, epochs=4, batch_size=20, checkpoint_every=2, lr=1e-3)
OLD = ("image", "text", "audio", "3d")


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture
def fake_run(tmp_path, small_xmedia) -> Path:
    """A finished 4-modality run on the small synthetic data, made without training."""
    return make_finished_run(tmp_path / "run", small_xmedia, OLD, TINY,
                             mlflow={"tracking_uri": None, "experiment_id": None, "parent_run_id": None})


def write_table(path: Path, labels: list[list[int]], features, fixed: bool = True) -> str:
    """A loose modality table written with pyarrow directly (bypassing our writer's checks)."""
    n = len(labels)
    splits = (["train"] * (n - 20) + ["val"] * 10 + ["test"] * 10)[:n]
    if fixed:
        feats = np.asarray(features, np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), feats.shape[1])
    else:
        col = pa.array([list(map(float, f)) for f in features], pa.list_(pa.float32()))
    table = pa.table({"id": pa.array([f"r{i}" for i in range(n)]), "split": pa.array(splits),
                      "labels": pa.array(labels, pa.list_(pa.int32())), "features": col})
    pq.write_table(table, path)
    return str(path)


def good_rows(n: int = 60, dim: int = 8):
    rng = np.random.default_rng(1)
    return [[i % 20] for i in range(n)], rng.standard_normal((n, dim))


def video_dataset(out: Path, small_xmedia: str, n_classes: int = 20, rename: int | None = None,
                  dim_in_json: int | None = None) -> str:
    """The small data's video table under another dataset.json (other classes or a wrong dim)."""
    ds = open_dataset(small_xmedia, validate=False)
    d = {s: ds.read_split("video", s) for s in ("train", "val", "test")}
    names = [f"class_{i:02d}" for i in range(n_classes)]
    if rename is not None:
        names[rename] = "giraffe"
    ids = np.concatenate([d[s].ids for s in d])
    splits = np.concatenate([[s] * len(d[s]) for s in d])
    labels = np.concatenate([d[s].labels.argmax(1) % n_classes for s in d])
    feats = np.concatenate([d[s].features for s in d])
    info = DatasetInfo("other", n_classes, False, tuple(names), {"video": ModalityInfo("video", 64)})
    write_dataset(str(out), info, {"video": (ids, splits, labels, feats)})
    if dim_in_json is not None:
        meta = json.loads((out / "dataset.json").read_text())
        meta["modalities"]["video"]["dim"] = dim_in_json
        (out / "dataset.json").write_text(json.dumps(meta))
    return str(out)


def fails(capsys, run: Path, argv: list[str], message: str) -> None:
    before = tree_hashes(run) if run.exists() else None
    assert add_main(["--run", str(run), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    lines = [line for line in err.splitlines() if line.startswith("xmr: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    if before is not None:
        assert tree_hashes(run) == before  # not one byte of the run changed


def test_not_a_finished_run(tmp_path, capsys, fake_run, small_xmedia):
    data = ["--modality", "video", "--data", small_xmedia]
    fails(capsys, tmp_path / "nope", data, "run directory not found")
    (tmp_path / "empty").mkdir()
    fails(capsys, tmp_path / "empty", data, "not a run directory (no run.json)")
    store = RunStore(fake_run)
    meta = store.read().to_json()
    store.run_json.write_text(json.dumps({**meta, "status": "running"}))
    fails(capsys, fake_run, data, "not a finished run (status 'running')")
    for kind in ("branch", "pairs"):  # "pairs": a branch run written before the kind was renamed
        store.run_json.write_text(json.dumps({**meta, "kind": kind}))
        fails(capsys, fake_run, data, "not an SDML run (kind 'branch')")
    store.run_json.write_text(json.dumps({**meta, "kind": "pair"}))
    fails(capsys, fake_run, data, "run.json: kind must be one of sdml, branch, got 'pair'")
    store.run_json.write_text(json.dumps({**meta, "colour": "red"}))
    fails(capsys, fake_run, data, "run.json: unknown key 'colour'")


def test_existing_modality_needs_replace(capsys, fake_run, small_xmedia):
    fails(capsys, fake_run, ["--modality", "3d", "--data", small_xmedia],
          "--modality '3d': the run")
    fails(capsys, fake_run, ["--modality", "3d", "--data", small_xmedia], "pass --replace to retrain it")


def test_classes_differ(tmp_path, capsys, fake_run, small_xmedia):
    fewer = video_dataset(tmp_path / "d19", small_xmedia, n_classes=19)
    fails(capsys, fake_run, ["--modality", "video", "--data", fewer],
          "d19/dataset.json: 19 classes, but the run")
    renamed = video_dataset(tmp_path / "d20", small_xmedia, rename=3)
    fails(capsys, fake_run, ["--modality", "video", "--data", renamed],
          "class names differ from the run's at index 3: 'giraffe' here, 'class_03' in")


def test_bad_tables(tmp_path, capsys, fake_run):
    labels, feats = good_rows()
    out_of_range = write_table(tmp_path / "range.parquet", [[20], *labels[1:]], feats)
    fails(capsys, fake_run, ["--modality", "lidar", "--table", out_of_range],
          "column 'labels' has value 20 at row id 'r0'; labels must be in [0, 20)")
    negative = write_table(tmp_path / "neg.parquet", [*labels[:5], [-1], *labels[6:]], feats)
    fails(capsys, fake_run, ["--modality", "lidar", "--table", negative], "has value -1 at row id 'r5'")
    nan = feats.copy()
    nan[7, 2] = np.nan
    bad = write_table(tmp_path / "n.parquet", labels, nan)
    fails(capsys, fake_run, ["--modality", "lidar", "--table", bad],
          "column 'features' has NaN or inf at row id 'r7'")
    inf = feats.copy()
    inf[41, 0] = -np.inf
    bad = write_table(tmp_path / "i.parquet", labels, inf)
    fails(capsys, fake_run, ["--modality", "lidar", "--table", bad],
          "column 'features' has NaN or inf at row id 'r41'")
    ragged = [list(f) for f in feats]
    ragged[3] = ragged[3][:5]
    fails(capsys, fake_run, ["--modality", "lidar", "--table",
                             write_table(tmp_path / "ragged.parquet", labels, ragged, fixed=False)],
          "column 'features' has type list<")
    fails(capsys, fake_run, ["--modality", "lidar", "--table", str(tmp_path / "ragged.parquet")],
          "expected fixed_size_list<float32>[dim]")
    two = write_table(tmp_path / "two.parquet", [[1, 2], *labels[1:]], feats)
    fails(capsys, fake_run, ["--modality", "lidar", "--table", two],
          "row id 'r0' has 2 labels [1, 2] but the dataset is single-label")
    fails(capsys, fake_run, ["--modality", "lidar", "--table", str(tmp_path / "missing.parquet")],
          "modality table not found")
    good = write_table(tmp_path / "good.parquet", labels, feats)
    fails(capsys, fake_run, ["--modality", "lidar", "--table", good, "--batch-size", "50"],
          "train split has 40 rows, fewer than one batch of 50; lower --batch-size to at most 40")


def test_dataset_dim_differs_from_its_json(tmp_path, capsys, fake_run, small_xmedia):
    data = video_dataset(tmp_path / "d", small_xmedia, dim_in_json=65)
    fails(capsys, fake_run, ["--modality", "video", "--data", data],
          "column 'features' has dim 64 but dataset.json says 65")


def test_projection_checksum_no_longer_matches(capsys, fake_run, small_xmedia):
    save_projection(fake_run / "projection.arrow", create_projection(32, 20, seed=1), seed=1)
    fails(capsys, fake_run, ["--modality", "video", "--data", small_xmedia],
          f"{fake_run / 'projection.arrow'}: checksum check failed")


def test_missing_embeddings_of_an_existing_modality(capsys, fake_run, small_xmedia):
    os.remove(RunStore(fake_run).embeddings_path("audio", "test"))
    fails(capsys, fake_run, ["--modality", "video", "--data", small_xmedia],
          "test embeddings of modality 'audio' not found")


def test_bad_arguments(tmp_path, capsys, fake_run, small_xmedia):
    labels, feats = good_rows()
    table = write_table(tmp_path / "t.parquet", labels, feats)
    cases = [
        (["--modality", "video"], "--data DIR or --table FILE"),
        (["--modality", "video", "--data", small_xmedia, "--table", table],
         "give --data or --table, not both"),
        (["--modality", "a", "--modality", "b", "--table", table], "1 --table file(s) for 2 --modality"),
        (["--modality", "../x", "--data", small_xmedia], "--modality '../x': a modality name must match"),
        (["--modality", "video", "--modality", "video", "--data", small_xmedia], "given more than once"),
        (["--modality", "smell", "--data", small_xmedia], "--modality 'smell': not in dataset"),
        (["--modality", "video", "--data", small_xmedia, "--epochs", "0"],
         "epochs must be a positive integer, got 0"),
        (["--modality", "video", "--data", small_xmedia, "--lam", "1.5"], "lam must be in [0, 1], got 1.5"),
        (["--modality", "video", "--data", str(tmp_path / "nope")], "dataset directory not found"),
    ]
    for argv, message in cases:
        fails(capsys, fake_run, argv, message)


def test_a_second_job_on_the_same_run_is_refused(capsys, fake_run, small_xmedia):
    from scalable_xmr.store.lock import run_lock

    with run_lock(fake_run, command="xmr add-modality --run r"):  # as a running job holds it
        fails(capsys, fake_run, ["--modality", "video", "--data", small_xmedia],
              f"{fake_run}: in use by pid {os.getpid()} on ")


def test_flags_override_the_run_config_per_new_modality(tmp_path, small_xmedia):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"model": "sdml", "per_modality": {
        "video": {"config": {"lam": 0.2, "lr": 5e-4}}, "image": {"config": {"lam": 0.9}}}}))
    args = job_parser().parse_args(["--run", "r", "--modality", "video", "--modality", "lidar",
                                    "--data", small_xmedia, "--epochs", "7", "--no-normalize",
                                    "--config", str(best), "--lr", "1e-3"])
    req = request_from_args(args)
    assert req.overrides.per_modality == {  # best.json, then the flags; --lr beats best.json's lr
        "video": {"lam": 0.2, "lr": 5e-4, "epochs": 7, "normalize": False},
        "lidar": {"epochs": 7, "normalize": False},
    }
    assert req.overrides.lr.every == 1e-3
    assert req.tracking is None  # the run's own tracking
    cfg = req.overrides.config_for(TINY, "video")
    got = (cfg.lam, cfg.lr, cfg.epochs, cfg.normalize, cfg.dim, cfg.batch_size)
    assert got == (0.2, 1e-3, 7, False, 32, 20)
    args = job_parser().parse_args(["--run", "r", "--modality", "v", "--data", "d", "--experiment", "e"])
    assert request_from_args(args).tracking.experiment == "e"


def test_help_explains_every_flag():
    text = job_parser().format_help()
    for flag in ["--run", "--modality", "--data", "--table", "--replace", "--epochs", "--lam", "--lr",
                 "--batch-size", "--seed", "--gpus-per-modality", "--address", "--tracking-uri",
                 "--experiment", "--no-tracking"]:
        assert flag in text
    for action in job_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit):
        job_parser().parse_args(["--modality", "x"])  # --run is required
