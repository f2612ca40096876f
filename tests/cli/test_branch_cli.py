"""`xmr train-pairs` / jobs/train_pairs.py: flags, --config / --set routing, and bad input refused
at the door (one line on stderr, exit 2, before Ray starts); `xmr data` paired subcommands."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalable_xmr.cli import build_parser
from scalable_xmr.cli import main as xmr_main
from scalable_xmr.cli.branch import build_configs, job_parser, main
from scalable_xmr.data.paired import open_paired_dataset, write_paired_dataset

VOCAB = ["<pad>", "<unk>", "a", "dog", "cat", "runs"]


def _tiny(tmp_path, name="ds", per_image=2, dense=False):
    """3 splits x 3 images, ``per_image`` captions each (tokens, or dense features)."""
    ids = [f"i{k}" for k in range(9)]
    images = {"image_id": ids, "split": ["train"] * 3 + ["val"] * 3 + ["test"] * 3,
              "regions": np.random.default_rng(0).random((9, 2, 4)).astype(np.float32)}
    caps = [(f"{i}#{j}", i) for i in ids for j in range(per_image)]
    captions = {"caption_id": [c for c, _ in caps], "image_id": [i for _, i in caps]}
    if dense:
        captions["features"] = np.ones((len(caps), 3), np.float32)
        return write_paired_dataset(tmp_path / name, images, captions, None)
    captions["tokens"] = [[2, 3 + k % 3] for k in range(len(caps))]
    return write_paired_dataset(tmp_path / name, images, captions, VOCAB)


def _run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_every_flag_has_help_and_the_xmr_command_exists():
    for action in job_parser()._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    args = build_parser().parse_args(["train-pairs", "--model", "mtfn", "--model", "vse", "--k", "5"])
    assert args.model == ["mtfn", "vse"] and args.k == 5 and args.func.__name__ == "run_branch"


def _args(*argv):
    return job_parser().parse_args(list(argv))


def test_best_json_routing_and_flag_precedence(tmp_path):
    best = tmp_path / "best.json"
    config = {"lr": 1e-3, "margin": 0.3, "rank": 7, "k": 5, "k_text": 2, "batch_size": 64}
    best.write_text(json.dumps({"model": "mtfn", "config": config, "trial_id": "t1"}))
    args = _args("--config", str(best), "--lr", "0.01", "--epochs", "6")
    trainers, models, ks, k_texts = build_configs(args)
    mtfn = trainers["mtfn"]
    assert list(trainers) == ["mtfn"]  # the model of best.json when no --model is given
    assert (mtfn.lr, mtfn.batch_size, mtfn.epochs, mtfn.text_epochs) == (0.01, 64, 6, 3)
    # margin is a model-config key: the model's config is its one owner
    assert models == {"mtfn": {"rank": 7, "margin": 0.3}} and not hasattr(mtfn, "margin")
    assert ks == (5,) and k_texts == (2,)
    trainers, models, ks, _ = build_configs(
        _args("--config", str(best), "--model", "vse", "--model", "mtfn", "--rank", "3", "--k", "2"))
    assert models["mtfn"]["rank"] == 3 and ks == (2,) and trainers["vse"].lr == 2e-4  # vse: defaults
    trainers, _, _, _ = build_configs(_args("--model", "mtfn", "--epochs", "4"), one_caption=True)
    assert trainers["mtfn"].text_epochs == 0  # S_TT needs 2 captions of one image


def test_set_routes_model_and_trainer_keys():
    trainers, models, _, _ = build_configs(_args(
        "--model", "vse", "--model", "mmca", "--set", "embed_dim=64", "--set", "mmca.n_heads=4",
        "--set", "lr_decay_epochs=0", "--set", "mmca.lr=0.002", "--margin", "0.1", "--alpha", "0.5",
        "--lr", "0.01"))
    assert models == {"vse": {"embed_dim": 64, "margin": 0.1},
                      "mmca": {"embed_dim": 64, "n_heads": 4, "alpha": 0.5, "margin": 0.1}}
    assert trainers["vse"].lr_decay_epochs == 0 == trainers["mmca"].lr_decay_epochs
    assert (trainers["vse"].lr, trainers["mmca"].lr) == (0.01, 0.002)  # --set wins over --lr


def test_each_model_trains_on_its_own_schedule_unless_a_flag_overrides_it():
    trainers, _, _, _ = build_configs(_args("--model", "vsa", "--model", "mmca", "--model", "mtfn"))
    # VSA-AE-MMD §4.2 batch 32 (40 epochs: our choice), MMCA §4.2, MTFN-RR §4.1
    got = {m: (t.epochs, t.batch_size, t.lr, t.lr_decay_epochs, t.lr_decay) for m, t in trainers.items()}
    assert got == {"vsa": (40, 32, 2e-4, 20, 0.1), "mmca": (20, 64, 2e-4, 10, 0.1),
                   "mtfn": (50, 128, 1e-4, 10, 0.5)}
    assert trainers["mtfn"].text_epochs == 25  # half of MTFN's 50 image-text epochs
    trainers, _, _, _ = build_configs(_args("--model", "vsa", "--model", "mmca", "--epochs", "3",
                                            "--batch-size", "8", "--set", "mmca.lr=0.001"))
    assert {m: (t.epochs, t.batch_size, t.lr) for m, t in trainers.items()} == {
        "vsa": (3, 8, 2e-4), "mmca": (3, 8, 1e-3)}
    assert trainers["mmca"].lr_decay_epochs == 10  # what no flag names stays the model's


def test_help_lists_each_models_schedule_and_parsing_needs_no_torch():
    import subprocess
    import sys

    text = " ".join(job_parser().format_help().split())
    for line in ("--epochs EPOCHS image-text training epochs of every model (default per model: "
                 "vse 30, mtfn 50, mmca 20, vsa 40.",
                 "batch size of every model (default per model: vse 128, mtfn 128, mmca 64, vsa 32)",
                 "learning rate of every model (default per model: vse 2e-4, mtfn 1e-4, mmca 2e-4, "
                 "vsa 2e-4)",
                 "mtfn: 50 epochs, batch 128, lr 1e-4 x0.5 every 10 epochs (MTFN-RR §4.1)",
                 "40 in all is our choice"):
        assert line in text, line
    code = ("import sys; from scalable_xmr.cli.branch import job_parser; "
            "job_parser().parse_args(['--epochs', '3']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the model configs are read only to print the help


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--set", "vse.text_epochs=2"], "--set 'vse.text_epochs=2': 'text_epochs' is not a schedule "
         "key of vse \\(schedule keys: epochs, batch_size, lr, lr_decay_epochs, lr_decay; text_epochs"),
        (["--model", "mtfn", "--rank", "0"], "--rank must be >= 1, got 0"),
        (["--margin", "-0.1"], "--margin must be >= 0, got -0.1"),
        (["--k", "0"], "--k must be >= 1, got 0"),
        (["--k-text", "-1"], "--k-text must be >= 0"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--ensemble", "0"], "--ensemble must be >= 1"),
        (["--rank", "4"], "--rank applies to --model mtfn only"),
        (["--model", "vse", "--alpha", "0.5"], "--alpha applies to --model mmca only"),
        (["--text-epochs", "2"], "--text-epochs applies to --model mtfn only"),
        (["--set", "nope=1"], "no selected model has a config key 'nope'"),
        (["--set", "mmca.alpha=1"], "model 'mmca' is not among --model vse"),
        (["--set", "embed_dim"], "expected \\[MODEL.\\]KEY=VALUE"),
        (["--set", "vse.embed_dim=0"], "embed_dim"),
        (["--model", "mmca", "--alpha", "nan"], "--alpha must be >= 0"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, match):
    rc, line = _run(["--data", str(tmp_path / "nowhere"), "--run", str(tmp_path / "run"), *argv], capsys)
    assert rc == 2 and line.startswith("xmr: error: ")
    assert re.search(match, line), line
    assert not (tmp_path / "run").exists()


def test_bad_t2i_groups_are_refused_once_by_the_request(tmp_path, capsys):
    """One check, where the typed request is built (BranchRequest): a one-line error, nothing written."""
    rc, line = _run(["--data", str(_tiny(tmp_path)), "--run", str(tmp_path / "run"),
                     "--t2i-groups", "both"], capsys)
    assert rc == 2 and line == "xmr: error: --t2i-groups must be one of candidate, query, got 'both'"
    assert not (tmp_path / "run").exists()


def test_t2i_groups_reach_the_request(tmp_path):
    from scalable_xmr.cli.branch import request_from_args

    data = str(_tiny(tmp_path))
    base = ["--data", data, "--run", str(tmp_path / "run")]
    assert request_from_args(_args(*base)).t2i_groups == "candidate"  # MTFN-RR Eq. 15
    assert request_from_args(_args(*base, "--t2i-groups", "query")).t2i_groups == "query"
    assert not (tmp_path / "run").exists()


def test_best_json_of_another_model_is_refused(tmp_path, capsys):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"model": "mtfn", "config": {"rank": 4}}))
    rc, line = _run(["--config", str(best), "--model", "vse"], capsys)
    assert rc == 2 and "a best.json for model 'mtfn', but --model is vse" in line
    best.write_text(json.dumps({"model": "sdml", "per_modality": {}}))
    assert "not a branch-model best.json (model 'sdml'" in _run(["--config", str(best)], capsys)[1]
    best.write_text(json.dumps({"model": "vse", "config": {"rnak": 4}}))
    line = _run(["--config", str(best)], capsys)[1]
    assert "best.json: rnak: not a config key of vse or of its trainer" in line


def _corrupt(root, column, edit):
    table = pq.read_table(root / "captions.parquet")
    values = table.column(column).to_pylist()
    edit(values)
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, pa.array(values, table.schema.field(column).type)),
                   root / "captions.parquet")
    return root


def _uneven_test(values):
    values[-1] = "i0"  # the last test caption now belongs to a train image


@pytest.mark.parametrize(
    "make, extra, match",
    [
        (lambda p: _corrupt(_tiny(p), "image_id", lambda v: v.__setitem__(0, "ghost")), [],
         "caption 'i0#0' refers to unknown image 'ghost'"),
        (lambda p: _corrupt(_tiny(p), "tokens", lambda v: v.__setitem__(3, [])), [],
         "caption 'i1#1' is empty"),
        (lambda p: _corrupt(_tiny(p), "tokens", lambda v: v.__setitem__(2, [2, 99])), [],
         "token 99 outside the vocabulary 1..5"),
        (lambda p: _corrupt(_tiny(p), "image_id", lambda v: v.__setitem__(13, "i7")), [],
         "split 'test' has 6 captions for 3 images but not the same number of captions"),
        (lambda p: _tiny(p), ["--k", "4"], "k=4 is larger than the gallery allows \\(3\\)"),
        (lambda p: _tiny(p), ["--k-text", "6"], "k_text=6 is larger than the gallery allows \\(5\\)"),
        (lambda p: _tiny(p, per_image=1, dense=True), ["--model", "mtfn", "--text-epochs", "2"],
         "MTFN's S_TT trains on two captions of one image .* has 1 caption per image"),
        (lambda p: _tiny(p), ["--model", "vsa", "--target", "/nowhere/target"], "target"),
    ],
)
def test_bad_data_is_refused_before_anything_runs(tmp_path, capsys, make, extra, match):
    data = make(tmp_path)
    rc, line = _run(["--data", str(data), "--run", str(tmp_path / "run"), "--no-tracking", *extra], capsys)
    assert rc == 2 and re.search(match, line), line
    assert not (tmp_path / "run").exists()


def test_inconsistent_region_arrays_are_refused(tmp_path, capsys):
    root = _tiny(tmp_path)
    images = pq.read_table(root / "images.parquet")
    ragged = pa.array([[[0.0] * 4] * (2 if k % 2 else 3) for k in range(9)], pa.list_(pa.list_(pa.float32())))
    pq.write_table(images.set_column(2, "regions", ragged), root / "images.parquet")
    rc, line = _run(["--data", str(root), "--run", str(tmp_path / "run")], capsys)
    assert rc == 2 and "column regions: expected fixed_size_list<float32>" in line, line


def test_data_subcommands_for_paired_datasets(tmp_path, capsys):
    assert xmr_main(["data", "synthetic-pairs", "--out", str(tmp_path / "syn"), "--n-train", "6",
                     "--n-val", "2", "--n-test", "2", "--n-regions", "3", "--dim", "4", "--seed", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "synthetic paired data" in out and "train 6 images 30 captions (5 per image)" in out
    assert open_paired_dataset(tmp_path / "syn").image_shape == (3, 4)
    src = tmp_path / "src"
    src.mkdir()
    for name, n in (("train", 2), ("dev", 1), ("testall", 1)):
        np.save(src / f"{name}_ims.npy", np.ones((n, 5), np.float32))
        (src / f"{name}_caps.txt").write_text("a dog\na cat\n" * n)
    argv = ["data", "precomp", str(src), "--out", str(tmp_path / "pc"), "--min-count", "1",
            "--captions-per-image", "2", "--test-split", "testall"]
    assert xmr_main(argv) == 0
    assert "test 1 images 2 captions (2 per image)" in " ".join(capsys.readouterr().out.split())
    assert xmr_main(argv) == 2 and "already exists" in capsys.readouterr().err
