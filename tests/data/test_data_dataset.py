"""Dataset layout (docs/data.md): round trips, split-only reads, every bad input named."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalable_xmr.data import (
    DatasetInfo,
    ModalityInfo,
    SplitData,
    inspect_dataset,
    open_dataset,
    read_modality_table,
    write_dataset,
    write_modality_table,
)
from scalable_xmr.errors import InputError, MissingError

SPLIT_CYCLE = ["train", "train", "val", "test"]


def _info(multi_label=False, dims=(4, 3), n_classes=3):
    mods = {f"m{i}": ModalityInfo(f"m{i}", d) for i, d in enumerate(dims)}
    return DatasetInfo(
        "toy", n_classes, multi_label, tuple(f"c{i}" for i in range(n_classes)), mods
    )


def _single(n=12, dim=4, prefix="r", seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i}" for i in range(n)]
    splits = [SPLIT_CYCLE[i % 4] for i in range(n)]  # interleaved on purpose
    labels = np.arange(n) % 3
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    return ids, splits, labels, feats


def test_round_trip_single_label(tmp_path):
    tables = {"m0": _single(12, 4), "m1": _single(8, 3, prefix="s", seed=1)}
    write_dataset(str(tmp_path / "ds"), _info(), tables)
    ds = open_dataset(str(tmp_path / "ds"))
    assert ds.modalities == ["m0", "m1"]
    assert ds.info == _info()
    for m, (ids, splits, labels, feats) in tables.items():
        for split in ("train", "val", "test"):
            rows = [i for i, s in enumerate(splits) if s == split]  # original order kept
            got = ds.read_split(m, split)
            assert list(got.ids) == [ids[i] for i in rows]
            np.testing.assert_array_equal(got.features, feats[rows])
            np.testing.assert_array_equal(got.label_indices(), labels[rows])
            onehot = np.zeros((len(rows), 3), np.float32)
            for k, i in enumerate(rows):
                onehot[k, labels[i]] = 1.0
            np.testing.assert_array_equal(got.labels, onehot)
            assert got.labels.dtype == np.float32


def test_read_split_reads_only_that_split_float32_c_contiguous(tmp_path):
    ids, _, labels, feats = _single(40, 4)
    splits = ["train"] * 25 + ["val"] * 5 + ["test"] * 10
    ds = write_dataset(str(tmp_path / "ds"), _info(dims=(4,)), {"m0": (ids, splits, labels, feats)})
    assert ds.split_sizes() == {"m0": {"train": 25, "val": 5, "test": 10}}
    for split, n in (("train", 25), ("val", 5), ("test", 10)):
        got = ds.read_split("m0", split)
        assert len(got) == n and got.features.shape == (n, 4)
        assert got.features.dtype == np.float32 and got.features.flags.c_contiguous
    # one row group per split: a reader can skip the other splits by statistics
    meta = pq.ParquetFile(tmp_path / "ds" / "m0.parquet").metadata
    stats = [meta.row_group(i).column(1).statistics for i in range(meta.num_row_groups)]
    assert [(s.min, s.max) for s in stats] == [("train", "train"), ("val", "val"), ("test", "test")]
    # zero-copy: a view of (read-only) Arrow memory; a NumPy copy would be writeable
    assert not ds.read_split("m0", "train").features.flags.writeable


def test_multi_label_and_unlabeled_rows(tmp_path):
    labels = [[0, 2], [], [1], [0, 1, 2], [2], [], [0], [1]]
    splits = ["train", "train", "val", "test", "train", "val", "test", "train"]
    feats = np.arange(16, dtype=np.float32).reshape(8, 2)
    ids = [f"x{i}" for i in range(8)]
    info = _info(multi_label=True, dims=(2,))
    ds = write_dataset(str(tmp_path / "ds"), info, {"m0": (ids, splits, labels, feats)})
    tr = ds.read_split("m0", "train")
    assert list(tr.ids) == ["x0", "x1", "x4", "x7"]
    np.testing.assert_array_equal(tr.labels, [[1, 0, 1], [0, 0, 0], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(tr.labeled, [True, False, True, True])
    with pytest.raises(InputError, match="row id 'x0' has 2 labels"):
        tr.label_indices()


def test_label_forms_are_equivalent(tmp_path):
    ids, splits, labels, feats = _single(8, 2)
    multi_hot = np.eye(3, dtype=np.int64)[labels]
    lists = [[int(v)] for v in labels]
    for k, form in enumerate((labels, multi_hot, lists)):
        write_modality_table(str(tmp_path / f"t{k}.parquet"), ids, splits, form, feats)
    tables = [pq.read_table(tmp_path / f"t{k}.parquet") for k in range(3)]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert tables[0].schema.field("labels").type == pa.list_(pa.int32())
    assert tables[0].schema.field("features").type == pa.list_(pa.float32(), 2)


def test_read_modality_table(tmp_path):
    ids, splits, labels, feats = _single(12, 4)
    path = str(tmp_path / "new.parquet")
    write_modality_table(path, ids, splits, labels, feats)
    out = read_modality_table(path, n_classes=3, dim=4)
    assert {s: len(d) for s, d in out.items()} == {"train": 6, "val": 3, "test": 3}
    np.testing.assert_array_equal(out["val"].features, feats[2::4])
    assert isinstance(out["test"], SplitData)
    with pytest.raises(InputError, match="has dim 4 but the caller says 5"):
        read_modality_table(path, n_classes=3, dim=5)
    with pytest.raises(InputError, match=r"value 2 at row id 'r5'; labels must be in \[0, 2\)"):
        read_modality_table(path, n_classes=2)


def test_sharded_table_directory_and_file_uri(tmp_path):
    root = tmp_path / "ds"
    write_dataset(str(root), _info(dims=(4,)), {"m0": _single(12, 4)})
    table = pq.read_table(root / "m0.parquet")
    os.remove(root / "m0.parquet")
    os.mkdir(root / "m0.parquet")
    pq.write_table(table.slice(0, 5), root / "m0.parquet" / "part-0.parquet")
    pq.write_table(table.slice(5), root / "m0.parquet" / "part-1.parquet")
    ds = open_dataset("file://" + str(root))
    assert ds.split_sizes()["m0"] == {"train": 6, "val": 3, "test": 3}
    assert sorted(ds.read_split("m0", "train").ids) == sorted(
        f"r{i}" for i in range(12) if i % 4 < 2
    )


def test_non_local_filesystem(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs = PyFileSystem(FSSpecHandler(fsspec.filesystem("memory")))
    ids, splits, labels, feats = _single(12, 4)
    tables = {"m0": (ids, splits, labels, feats)}
    write_dataset("/bucket/ds", _info(dims=(4,)), tables, filesystem=fs)
    write_dataset("/bucket/ds", _info(dims=(4,)), tables, filesystem=fs)  # rewrite in place
    ds = open_dataset("/bucket/ds", filesystem=fs)
    np.testing.assert_array_equal(ds.read_split("m0", "test").features, feats[3::4])
    assert [i.base_name for i in fs.get_file_info(pa.fs.FileSelector("/bucket"))] == ["ds"]


def test_write_dataset_overwrite_rules(tmp_path):
    out = str(tmp_path / "ds")
    tables = {"m0": _single(12, 4)}
    write_dataset(out, _info(dims=(4,)), tables)
    write_dataset(out, _info(dims=(4,)), tables)  # identical dataset.json: allowed
    other = DatasetInfo("other", 3, False, ("a", "b", "c"), {"m0": ModalityInfo("m0", 4)})
    with pytest.raises(InputError, match="already holds a different dataset.*--overwrite"):
        write_dataset(out, other, tables)
    write_dataset(out, other, tables, overwrite=True)
    assert open_dataset(out).info.name == "other"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty and is not a dataset"):
        write_dataset(str(tmp_path / "junk"), other, tables)
    assert sorted(os.listdir(tmp_path)) == ["ds", "junk"]  # no temp dirs left


def test_failed_write_leaves_nothing(tmp_path):
    ids, splits, labels, feats = _single(12, 4)
    out, info = str(tmp_path / "ds"), _info(dims=(4,))
    bad_feats = feats.copy()
    bad_feats[5, 1] = np.nan
    cases = [
        (
            {"m0": (ids, splits, labels, bad_feats)},
            "ds/m0.parquet: column 'features' has NaN or inf at row id 'r5'",
        ),
        ({"m0": (ids, splits, labels + 3, feats)}, "value 3 at row id 'r0'; labels must be in"),
        (
            {"m0": (ids, ["train"] * 12, labels, feats)},
            "ds/m0.parquet: column 'split' has no rows with value 'val'",
        ),
        ({"m0": (ids, splits, labels, feats[:, :3])}, "features have dim 3 but info says 4"),
        (
            {"m1": (ids, splits, labels, feats)},
            r"tables have modalities \['m1'\] but info lists \['m0'\]",
        ),
    ]
    for tables, match in cases:
        with pytest.raises(InputError, match=match):
            write_dataset(out, info, tables)
    single = _info(multi_label=False, dims=(4,))
    with pytest.raises(InputError, match="row id 'r0' has 2 labels"):
        write_dataset(out, single, {"m0": (ids, splits, [[0, 1]] * 12, feats)})
    assert os.listdir(tmp_path) == []  # neither the dataset nor a temp dir


def test_inspect(tmp_path):
    write_dataset(str(tmp_path / "ds"), _info(), {"m0": _single(12, 4), "m1": _single(8, 3)})
    text = inspect_dataset(str(tmp_path / "ds"))
    assert "toy" in text and "single-label" in text and "c0, c1, c2" in text
    lines = {
        ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.startswith(("m0", "m1"))
    }
    assert lines == {"m0": ["4", "6", "3", "3", "12"], "m1": ["3", "4", "2", "2", "8"]}


# ----------------------------------------------------------------------------- dataset.json


def test_info_json_round_trip():
    info = _info(multi_label=True)
    assert DatasetInfo.from_json(json.loads(json.dumps(info.to_json())), "x") == info


@pytest.mark.parametrize(
    "change, match",
    [
        ({"extra": 1}, r"src: unknown key\(s\) \['extra'\]"),
        ({"n_classes": None}, r"src: missing key\(s\) \['n_classes'\]"),
        ({"n_classes": 4}, "src: n_classes=4 but class_names has 3 entries"),
        ({"class_names": ["a", "a", "b"]}, "src: 'class_names' must be distinct strings"),
        ({"multi_label": "no"}, "src: 'multi_label' must be true or false"),
        ({"modalities": {}}, "src: 'modalities' must be a non-empty object"),
        ({"modalities": {"m0": {"dim": 4, "size": 3}}}, r"modalities\['m0'\]: unknown key"),
        ({"modalities": {"m0": {"dim": 0}}}, "modality 'm0': 'dim' must be a positive integer"),
        ({"modalities": {"m0": {"dim": 4, "kind": "regions"}}}, "'kind' must be 'dense'"),
        ({"modalities": {"a/b": {"dim": 4}}}, "modality name 'a/b' must match"),
    ],
)
def test_info_bad_json(change, match):
    d = _info().to_json()
    d.update(change)
    if change.get("n_classes", 0) is None:
        del d["n_classes"]
    with pytest.raises(InputError, match=match):
        DatasetInfo.from_json(d, "src")


# ----------------------------------------------------------------------------- bad tables


def _raw_dataset(root, rows, dim=2, json_dim=None, n_classes=3, multi_label=False, typ=None):
    """A dataset written by hand (no checks), for validation tests. rows: (id, split, labels, x)."""
    os.makedirs(root)
    info = _info(multi_label, dims=(json_dim or dim,), n_classes=n_classes).to_json()
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(info, f)
    ids, splits, labels, feats = zip(*rows, strict=True)
    ftype = typ or pa.list_(pa.float32(), dim)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "split": pa.array(splits, pa.string()),
            "labels": pa.array(labels, pa.list_(pa.int32())),
            "features": pa.array([list(map(float, x)) for x in feats], ftype),
        }
    )
    pq.write_table(table, os.path.join(root, "m0.parquet"))


GOOD = [("a", "train", [0], [1, 2]), ("b", "val", [1], [3, 4]), ("c", "test", [2], [5, 6])]


@pytest.mark.parametrize(
    "rows, kwargs, match",
    [
        (
            GOOD[:2] + [("c", "test", [2], [5, np.nan])],
            {},
            "column 'features' has NaN or inf at row id 'c'",
        ),
        (GOOD[:2] + [("c", "test", [2], [np.inf, 1])], {}, "NaN or inf at row id 'c'"),
        (
            GOOD[:2] + [("c", "test", [3], [5, 6])],
            {},
            r"'labels' has value 3 at row id 'c'; labels must be in \[0, 3\)",
        ),
        (GOOD[:2] + [("c", "test", [-1], [5, 6])], {}, "'labels' has value -1 at row id 'c'"),
        (
            GOOD + [("a", "test", [1], [0, 0])],
            {},
            "column 'id' has duplicate value 'a' \\(2 rows\\)",
        ),
        (GOOD[:1] + GOOD[2:], {}, "column 'split' has no rows with value 'val'"),
        (GOOD + [("d", "training", [1], [0, 0])], {}, "'split' has value 'training' at row id 'd'"),
        (
            GOOD + [("d", "train", [0, 1], [0, 0])],
            {},
            r"row id 'd' has 2 labels \[0, 1\] but the dataset is single-label",
        ),
        (GOOD, {"json_dim": 3}, "m0.parquet: column 'features' has dim 2 but dataset.json says 3"),
        (
            GOOD,
            {"typ": pa.list_(pa.float64())},
            "column 'features' has type list<.*double>, expected fixed_size_list",
        ),
        (GOOD, {"n_classes": 2}, "value 2 at row id 'c'"),
    ],
)
def test_bad_tables(tmp_path, rows, kwargs, match):
    root = str(tmp_path / "ds")
    _raw_dataset(root, rows, **kwargs)
    with pytest.raises(InputError, match=match):
        open_dataset(root)


def test_multi_label_dataset_accepts_several_and_empty_labels(tmp_path):
    rows = GOOD + [("d", "train", [0, 1], [0, 0]), ("e", "train", [], [0, 0])]
    _raw_dataset(str(tmp_path / "ds"), rows, multi_label=True)
    assert open_dataset(str(tmp_path / "ds")).split_sizes()["m0"]["train"] == 3


def test_read_split_checks_its_rows_without_validate(tmp_path):
    root = str(tmp_path / "ds")
    _raw_dataset(root, GOOD[:2] + [("c", "test", [2], [5, np.nan])])
    ds = open_dataset(root, validate=False)
    assert len(ds.read_split("m0", "val")) == 1
    with pytest.raises(InputError, match="NaN or inf at row id 'c'"):
        ds.read_split("m0", "test")
    with pytest.raises(InputError, match="split must be one of.*'dev'"):
        ds.read_split("m0", "dev")
    with pytest.raises(InputError, match="no modality 'audio'"):
        ds.read_split("audio", "test")


def test_missing_and_unreadable_files(tmp_path):
    root = tmp_path / "ds"
    _raw_dataset(str(root), GOOD)
    with pytest.raises(MissingError, match="nowhere: dataset directory not found"):
        open_dataset(str(tmp_path / "nowhere"))
    (root / "m0.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="m0.parquet: not a readable Parquet table"):
        open_dataset(str(root))
    os.remove(root / "m0.parquet")
    with pytest.raises(MissingError, match="m0.parquet: modality table not found"):
        open_dataset(str(root))
    (root / "dataset.json").write_text("{broken")
    with pytest.raises(InputError, match="dataset.json: not valid JSON"):
        open_dataset(str(root))
    os.remove(root / "dataset.json")
    with pytest.raises(MissingError, match="dataset.json: file not found"):
        open_dataset(str(root))


def test_missing_column(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a"], "split": ["train"], "labels": [[0]]}), path)
    with pytest.raises(InputError, match=r"t.parquet: missing column 'features'"):
        read_modality_table(str(path), n_classes=3)


@pytest.mark.parametrize(
    "ids, splits, labels, feats, match",
    [
        (
            ["a", "b"],
            ["train", "val"],
            [0, 1],
            np.zeros((3, 2)),
            r"ids has shape \(2,\) but features have 3 rows",
        ),
        (["a", "a"], ["train", "val"], [0, 1], np.zeros((2, 2)), "duplicate value 'a'"),
        (
            ["a", "b"],
            ["train", "dev"],
            [0, 1],
            np.zeros((2, 2)),
            "'split' has value 'dev' at row id 'b'",
        ),
        (
            ["a", "b"],
            ["train", "val"],
            [0, -2],
            np.zeros((2, 2)),
            "value -2 at row id 'b'; labels must be >= 0",
        ),
        (
            ["a", "b"],
            ["train", "val"],
            np.array([[0, 2], [1, 0]]),
            np.zeros((2, 2)),
            "multi-hot labels must hold only 0 and 1",
        ),
        (["a", "b"], ["train", "val"], [0.5, 1], np.zeros((2, 2)), "labels must be integers"),
        (
            ["a", "b"],
            ["train", "val"],
            [0],
            np.zeros((2, 2)),
            "labels have 1 rows but features have 2",
        ),
        (
            ["a", "b"],
            ["train", "val"],
            [0, 1],
            np.zeros(2),
            r"features must be a numeric \(n, dim\) array",
        ),
    ],
)
def test_write_modality_table_bad_inputs(tmp_path, ids, splits, labels, feats, match):
    with pytest.raises(InputError, match=match):
        write_modality_table(str(tmp_path / "t.parquet"), ids, splits, labels, feats)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("batch_rows", [1, 4, 1000])
def test_iter_split_streams_the_rows_read_split_reads_in_order(tmp_path, batch_rows):
    root = tmp_path / "ds"
    write_dataset(str(root), _info(dims=(4,)), {"m0": _single(40, 4)})
    ds = open_dataset(str(root))
    for split in ("train", "val"):
        whole = ds.read_split("m0", split)
        parts = list(ds.iter_split("m0", split, batch_rows))
        assert all(len(p.ids) <= batch_rows for p in parts)
        assert list(np.concatenate([p.ids for p in parts])) == list(whole.ids)
        np.testing.assert_array_equal(np.concatenate([p.features for p in parts]), whole.features)
        np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), whole.labels)
