"""Wikipedia / NUS-WIDE / MS-COCO .h5 converter on tiny files with the official keys."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from scalable_xmr.data import convert_h5, open_dataset
from scalable_xmr.errors import InputError, MissingError


def _write_h5(path, n_train, n_test, dims=(8, 5), labels="single", low=1, seed=0, drop=()):
    """An SDML-layout .h5: image/text features + labels for train and test (paired rows)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        if labels == "single":
            y = rng.integers(low, low + 10, size=n)  # classes low..low+9
        else:
            y = (rng.random((n, 80)) < 0.05).astype(np.float64)  # COCO multi-hot
            y[0] = 0  # an unlabeled row
        arrays[f"{part}_imgs_deep"] = rng.standard_normal((n, dims[0])).astype(np.float32)
        arrays[f"{part}_text"] = rng.standard_normal((n, dims[1])).astype(np.float32)
        arrays[f"{part}_imgs_labels"] = y
        arrays[f"{part}_texts_labels"] = y
    with h5py.File(path, "w") as f:
        for k, a in arrays.items():
            if k not in drop:
                f[k] = a
    return arrays


def test_wikipedia(tmp_path):
    h5 = tmp_path / "wiki.h5"
    a = _write_h5(h5, n_train=30, n_test=240, low=1)
    ds = convert_h5(str(h5), "wikipedia", str(tmp_path / "wiki"))
    ds = open_dataset(str(tmp_path / "wiki"))
    assert ds.info.name == "wikipedia" and ds.modalities == ["image", "text"]
    assert ds.info.n_classes == 10 and not ds.info.multi_label
    assert {m: mi.dim for m, mi in ds.info.modalities.items()} == {"image": 8, "text": 5}
    sizes = {"train": 30, "val": 231, "test": 9}
    assert ds.split_sizes() == {"image": sizes, "text": sizes}
    test = ds.read_split("image", "test")
    np.testing.assert_array_equal(test.features, a["test_imgs_deep"][231:])
    np.testing.assert_array_equal(test.label_indices(), a["test_imgs_labels"][231:] - 1)  # 1-based
    val = ds.read_split("text", "val")
    np.testing.assert_array_equal(val.features, a["test_text"][:231])
    np.testing.assert_array_equal(val.label_indices(), a["test_texts_labels"][:231] - 1)
    # paired: both modalities share ids row by row
    train_img, train_txt = ds.read_split("image", "train"), ds.read_split("text", "train")
    assert (
        list(train_img.ids)
        == list(train_txt.ids)
        == [f"wikipedia-train-{i:06d}" for i in range(30)]
    )


def test_nus_wide_zero_based_n_by_1_labels(tmp_path):
    h5 = tmp_path / "nus.h5"
    a = _write_h5(h5, n_train=20, n_test=5003, dims=(4, 6), low=0)
    with h5py.File(h5, "r+") as f:  # (n, 1) columns, as MATLAB-exported files have
        for k in ("train_imgs_labels", "test_imgs_labels"):
            y = f[k][()]
            del f[k]
            f[k] = y.reshape(-1, 1)
    ds = convert_h5(str(h5), "nus-wide", str(tmp_path / "nus"))
    assert ds.split_sizes()["image"] == {"train": 20, "val": 5000, "test": 3}
    np.testing.assert_array_equal(
        ds.read_split("image", "test").label_indices(), a["test_imgs_labels"][5000:]
    )
    assert ds.info.modalities["text"].dim == 6


def test_coco_multi_hot(tmp_path):
    h5 = tmp_path / "coco.h5"
    a = _write_h5(h5, n_train=12, n_test=10002, dims=(4, 3), labels="multi")
    ds = convert_h5(str(h5), "coco", str(tmp_path / "coco"))
    assert ds.info.multi_label and ds.info.n_classes == 80
    assert ds.split_sizes()["text"] == {"train": 12, "val": 10000, "test": 2}
    test = ds.read_split("text", "test")
    np.testing.assert_array_equal(test.labels, a["test_texts_labels"][10000:])
    train = ds.read_split("image", "train")
    np.testing.assert_array_equal(train.labels, a["train_imgs_labels"])
    assert not train.labeled[0]  # all-zero row = unlabeled, kept
    stored = ds.read_split("image", "val")  # indices of the 1s in one row, checked by hand
    row = a["test_imgs_labels"][7]
    assert np.flatnonzero(stored.labels[7]).tolist() == [j for j in range(80) if row[j] == 1]


@pytest.mark.parametrize(
    "kwargs, name, match",
    [
        ({"drop": ("test_text",)}, "wikipedia", "x.h5: missing key 'test_text'"),
        (
            {"n_test": 231},
            "wikipedia",
            "key 'test_imgs_deep' has 231 rows; wikipedia needs more than 231",
        ),
        ({"n_test": 300}, "coco", "coco needs more than 10000"),
        ({}, "flickr", "name must be one of .*'flickr'"),
    ],
)
def test_bad_h5(tmp_path, kwargs, name, match):
    args = {"n_train": 10, "n_test": 240} | kwargs
    _write_h5(tmp_path / "x.h5", **args)
    with pytest.raises(InputError, match=match):
        convert_h5(str(tmp_path / "x.h5"), name, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == ["x.h5"]


def test_bad_h5_shapes(tmp_path):
    path = tmp_path / "x.h5"
    _write_h5(path, n_train=10, n_test=240)
    with h5py.File(path, "r+") as f:
        del f["train_text"]
        f["train_text"] = np.zeros((9, 5), np.float32)
    with pytest.raises(
        InputError, match=r"key 'train_text' has shape \(9, 5\) but 'train_texts_labels' has 10"
    ):
        convert_h5(str(path), "wikipedia", str(tmp_path / "out"))
    with h5py.File(path, "r+") as f:
        del f["train_imgs_labels"]
        f["train_imgs_labels"] = np.full((10, 80), 2.0)
    with pytest.raises(InputError, match="mix single-label and multi-hot"):
        convert_h5(str(path), "wikipedia", str(tmp_path / "out"))
    with pytest.raises(MissingError, match="none.h5: file not found"):
        convert_h5(str(tmp_path / "none.h5"), "wikipedia", str(tmp_path / "out"))
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.h5: not a readable HDF5 file"):
        convert_h5(str(tmp_path / "junk.h5"), "wikipedia", str(tmp_path / "out"))


def test_inf_in_the_h5_is_named_by_input_file_key_row_and_column(tmp_path):
    """#14 defect 8: it was reported against the output parquet, which is never written."""
    arrays = _write_h5(tmp_path / "w.h5", n_train=30, n_test=240)
    arrays["test_text"][11, 4] = np.inf
    with h5py.File(tmp_path / "w.h5", "w") as f:
        for k, a in arrays.items():
            f[k] = a
    with pytest.raises(InputError, match=rf"^{tmp_path / 'w.h5'}: key 'test_text' has inf at row 11, col"):
        convert_h5(str(tmp_path / "w.h5"), "wikipedia", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
