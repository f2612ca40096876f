"""``xmr data ...``: conversions, inspect, and one-line errors that leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from scalable_xmr.cli import main
from scalable_xmr.data import open_dataset


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xmr: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_synthetic_and_inspect(tmp_path, capsys):
    out = str(tmp_path / "syn")
    assert main(["data", "synthetic", "--out", out, "--scale", "small", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic data (not real XMedia)" in printed and "synthetic-xmedia-small" in printed
    assert open_dataset(out).split_sizes()["audio"] == {"train": 100, "val": 20, "test": 20}
    assert main(["data", "inspect", out]) == 0
    text = capsys.readouterr().out
    assert "20, single-label" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("audio"))
    assert row.split() == ["audio", "16", "100", "20", "20", "140"]


def test_existing_different_dataset_needs_overwrite(tmp_path, capsys):
    out = str(tmp_path / "ds")
    assert main(["data", "synthetic", "--out", out, "--scale", "small"]) == 0
    assert main(["data", "mfeat", "--out", out]) == 2
    _one_line_error(capsys, "already holds a different dataset", "--overwrite")
    assert open_dataset(out).info.name == "synthetic-xmedia-small"  # untouched
    assert main(["data", "mfeat", "--out", out, "--overwrite"]) == 0
    assert open_dataset(out).info.name == "mfeat"
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_xmedia_missing_key_fails_cleanly(tmp_path, capsys):
    mat = tmp_path / "XMediaFeatures.mat"
    scipy.io.savemat(mat, {"I_tr_CNN": np.zeros((3, 2))})
    out = tmp_path / "out" / "xm"
    assert main(["data", "xmedia", "--mat", str(mat), "--out", str(out)]) == 2
    _one_line_error(capsys, "XMediaFeatures.mat", "missing key", "I_te_CNN")
    assert not out.exists()
    assert not out.parent.exists() or os.listdir(out.parent) == []  # no temp dirs either
    assert main(["data", "xmedia", "--mat", str(tmp_path / "none.mat"), "--out", str(out)]) == 2
    _one_line_error(capsys, "none.mat: file not found")


def test_h5_bad_input_fails_cleanly(tmp_path, capsys):
    h5 = tmp_path / "wiki.h5"
    with h5py.File(h5, "w") as f:
        for part, n in (("train", 4), ("test", 10)):  # too few test rows for the 231-row val split
            f[f"{part}_imgs_deep"] = np.zeros((n, 3), np.float32)
            f[f"{part}_text"] = np.zeros((n, 2), np.float32)
            f[f"{part}_imgs_labels"] = np.arange(n) % 3
            f[f"{part}_texts_labels"] = np.arange(n) % 3
    out = tmp_path / "wiki"
    assert main(["data", "h5", "--file", str(h5), "--name", "wikipedia", "--out", str(out)]) == 2
    _one_line_error(capsys, "test_imgs_deep", "needs more than 231")
    assert sorted(os.listdir(tmp_path)) == ["wiki.h5"]
    with pytest.raises(SystemExit):  # argparse rejects an unknown dataset name
        main(["data", "h5", "--file", str(h5), "--name", "flickr", "--out", str(out)])


def test_inspect_missing_dataset_subprocess(tmp_path):
    """The installed `xmr` script: one line on stderr, exit 2, no traceback."""
    xmr = Path(sys.executable).parent / "xmr"
    if not xmr.exists():
        pytest.skip("xmr console script not installed")
    proc = subprocess.run(
        [str(xmr), "data", "inspect", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "XMR_DEBUG"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "dataset directory not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def _spoil(src: str, dst: Path, change) -> Path:
    """A copy of dataset ``src`` whose audio table went through ``change(pyarrow table)``."""
    import shutil

    import pyarrow.parquet as pq

    shutil.copytree(src, dst)
    path = dst / "audio.parquet"
    pq.write_table(change(pq.read_table(path)), path)
    return path


def _set(table, column, fn):
    import pyarrow as pa

    values, splits = table.column(column).to_pylist(), table.column("split").to_pylist()
    new = pa.array([fn(i, v, splits[i]) for i, v in enumerate(values)], table.schema.field(column).type)
    return table.set_column(table.schema.get_field_index(column), column, new)


@pytest.mark.parametrize("name, change, message", [
    ("unlabelled test", lambda t: _set(t, "labels", lambda i, v, s: [] if s == "test" else v),
     "the test split has no labelled row"),
    ("nan", lambda t: _set(t, "features", lambda i, v, s: [float("nan")] * len(v) if i == 3 else v),
     "NaN or inf"),
    ("unknown split", lambda t: _set(t, "split", lambda i, v, s: "dev" if i == 0 else v),
     "column 'split' has value 'dev'"),
    ("label out of range", lambda t: _set(t, "labels", lambda i, v, s: [99] if i == 5 else v),
     "column 'labels' has value 99"),
    ("duplicate id", lambda t: _set(t, "id", lambda i, v, s: t.column("id")[0].as_py() if i == 1 else v),
     "duplicate value"),
])
def test_inspect_validate_runs_the_jobs_checks(tmp_path, capsys, small_xmedia, name, change, message):
    """`xmr data inspect` checked only the schema: bad rows passed (issue #14, defect 5)."""
    path = _spoil(small_xmedia, tmp_path / "d", change)
    assert main(["data", "inspect", str(tmp_path / "d")]) == 0  # the summary alone reads no rows
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "d"), "--validate"]) == 2
    _one_line_error(capsys, str(path), message)


def test_inspect_paired_dataset(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["data", "synthetic-pairs", "--out", str(out), "--n-train", "6", "--n-val", "2",
                 "--n-test", "2"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--validate"]) == 0
    printed = capsys.readouterr().out
    assert "paired dataset" in printed and "valid: every row passed" in printed
    assert [line.split() for line in printed.splitlines() if line.startswith("train")] == [
        ["train", "6", "30", "5"]]
    # a file:// URI is the local directory (it was read as a modality dataset before: exit 2)
    assert main(["data", "inspect", f"file://{out}"]) == 0
    assert f"paired dataset  file://{out}" in capsys.readouterr().out


TINY_PAIRS = ["--n-train", "6", "--n-val", "2", "--n-test", "2", "--n-regions", "2", "--dim", "4"]


def _precomp_src(root: Path) -> Path:
    root.mkdir()
    for name, n in (("train", 2), ("dev", 1), ("test", 1)):
        np.save(root / f"{name}_ims.npy", np.ones((n, 5), np.float32))
        (root / f"{name}_caps.txt").write_text("a dog\na cat\n" * n)
    return root


def _paired_converters(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Each paired converter's (positional arguments before OUT, options)."""
    return {"synthetic-pairs": ([], TINY_PAIRS), "mfeat-pairs": ([], []),
            "precomp": ([str(_precomp_src(tmp_path / "src"))],
                        ["--min-count", "1", "--captions-per-image", "2"])}


def test_every_converter_takes_out(tmp_path, capsys):
    """`--out` everywhere; the paired converters' positional OUT still works, with a note on stderr."""
    from scalable_xmr.cli import build_parser
    from scalable_xmr.cli.reference import _commands
    from scalable_xmr.data.paired import open_paired_dataset

    converters = [w[-1] for w, p in _commands(build_parser(), ("xmr",))
                  if w[:2] == ("xmr", "data") and len(w) == 3 and w[-1] != "inspect"]
    assert len(converters) == 7
    for words, parser in _commands(build_parser(), ("xmr",)):
        if words[-1] in converters:
            assert "--out" in parser._option_string_actions, words
    for command, (src, opts) in _paired_converters(tmp_path).items():
        assert main(["data", command, *src, "--out", str(tmp_path / f"{command}-new"), *opts]) == 0
        assert "deprecated" not in capsys.readouterr().err
        assert main(["data", command, *src, str(tmp_path / f"{command}-old"), *opts]) == 0
        err = capsys.readouterr().err
        assert err == (f"xmr: note: the positional OUT of `xmr data {command}` is deprecated; pass --out "
                       f"{tmp_path / f'{command}-old'}\n")
        new, old = (open_paired_dataset(tmp_path / f"{command}-{form}") for form in ("new", "old"))
        assert new.splits() == old.splits() and new.image_shape == old.image_shape


def test_paired_converters_want_the_output_once(tmp_path, capsys):
    """Both forms, or neither: one line, exit 2, nothing written."""
    for command, (src, opts) in _paired_converters(tmp_path).items():
        before = sorted(os.listdir(tmp_path))
        both = ["data", command, *src, str(tmp_path / "a"), *opts, "--out", str(tmp_path / "b")]
        assert main(both) == 2
        _one_line_error(capsys, f"xmr data {command}: the output directory is given twice", "only --out")
        assert main(["data", command, *src, *opts]) == 2
        _one_line_error(capsys, f"xmr data {command}: no output directory: pass --out DIR")
        assert sorted(os.listdir(tmp_path)) == before
