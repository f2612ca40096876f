"""XMedia converter on a tiny XMediaFeatures.mat written with the official keys."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from scalable_xmr.data import convert_xmedia, open_dataset
from scalable_xmr.errors import InputError, MissingError

# modality -> (feature keys, label keys, dim, train rows, test-file rows, official test rows)
LAYOUT = {
    "image": (("I_tr_CNN", "I_te_CNN"), ("trImgCat", "teImgCat"), 6, 40, 520, 500),
    "text": (("T_tr_BOW", "T_te_BOW"), ("trTxtCat", "teTxtCat"), 8, 40, 510, 500),
    "audio": (("A_tr", "A_te"), ("trAudCat", "teAudCat"), 3, 20, 105, 100),
    "3d": (("d3_tr", "d3_te"), ("tr3dCat", "te3dCat"), 5, 20, 55, 50),
    "video": (("V_tr_CNN", "V_te_CNN"), ("trVidCat", "teVidCat"), 6, 20, 90, 87),
}


def _xmedia_arrays(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for (k_tr, k_te), (y_tr, y_te), dim, n_tr, n_te, _ in LAYOUT.values():
        arrays[k_tr] = rng.standard_normal((n_tr, dim))  # MATLAB doubles
        arrays[k_te] = rng.standard_normal((n_te, dim))
        arrays[y_tr] = rng.integers(1, 21, size=(n_tr, 1)).astype(np.float64)  # n x 1, 1..20
        arrays[y_te] = rng.integers(1, 21, size=(n_te, 1)).astype(np.float64)
    return arrays


@pytest.fixture(scope="module")
def mat(tmp_path_factory):
    arrays = _xmedia_arrays()
    path = tmp_path_factory.mktemp("xmedia") / "XMediaFeatures.mat"
    saved = dict(arrays, T_tr_BOW=scipy.sparse.csc_matrix(arrays["T_tr_BOW"]))  # BoW may be sparse
    scipy.io.savemat(path, saved)
    return str(path), arrays


def _check_converted(ds, arrays):
    assert ds.modalities == ["image", "text", "audio", "3d", "video"]
    assert ds.info.n_classes == 20 and not ds.info.multi_label
    assert ds.info.class_names[0] == "class_00" and ds.info.class_names[19] == "class_19"
    for m, ((k_tr, k_te), (y_tr, y_te), dim, n_tr, n_te, n_test) in LAYOUT.items():
        assert ds.info.modalities[m].dim == dim
        assert ds.split_sizes()[m] == {"train": n_tr, "val": n_te - n_test, "test": n_test}
        train, val, test = (ds.read_split(m, s) for s in ("train", "val", "test"))
        # test = first rows of *_te, val = the rest, labels 1..20 -> 0..19
        np.testing.assert_array_equal(test.features, arrays[k_te][:n_test].astype(np.float32))
        np.testing.assert_array_equal(val.features, arrays[k_te][n_test:].astype(np.float32))
        np.testing.assert_array_equal(train.features, arrays[k_tr].astype(np.float32))
        np.testing.assert_array_equal(test.label_indices(), arrays[y_te][:n_test, 0] - 1)
        np.testing.assert_array_equal(val.label_indices(), arrays[y_te][n_test:, 0] - 1)
        np.testing.assert_array_equal(train.label_indices(), arrays[y_tr][:, 0] - 1)
        assert val.ids[0] == f"{m}-te-{n_test:05d}" and test.ids[0] == f"{m}-te-00000"


def test_convert_xmedia(mat, tmp_path):
    path, arrays = mat
    convert_xmedia(path, str(tmp_path / "xm"))
    _check_converted(open_dataset(str(tmp_path / "xm")), arrays)
    # a hand check of one cell: the 3rd val image is row 502 of I_te_CNN, label teImgCat[502] - 1
    val = open_dataset(str(tmp_path / "xm")).read_split("image", "val")
    assert val.features[2, 4] == np.float32(arrays["I_te_CNN"][502, 4])
    assert val.labels[2].argmax() == int(arrays["teImgCat"][502, 0]) - 1


def test_convert_xmedia_v73_hdf5(tmp_path):
    """MATLAB v7.3 files are HDF5 with a 512-byte header and arrays stored transposed."""
    arrays = _xmedia_arrays(seed=1)
    path = tmp_path / "XMediaFeatures.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, a in arrays.items():
            f[k] = a.T  # column-major on disk
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")
    convert_xmedia(str(path), str(tmp_path / "xm"))
    _check_converted(open_dataset(str(tmp_path / "xm")), arrays)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"A_te": None}, "XMediaFeatures.mat: missing key 'A_te'"),
        ({"teVidCat": None}, "XMediaFeatures.mat: missing key 'teVidCat'"),
        (
            {"d3_te": np.zeros((50, 5))},
            "key 'd3_te' has 50 rows; the XMedia split needs more than 50",
        ),
        (
            {"trAudCat": np.full((20, 1), 21.0)},
            "key 'trAudCat' has label 21; XMedia labels are 1..20",
        ),
        ({"trAudCat": np.zeros((20, 1))}, "key 'trAudCat' has label 0; XMedia labels are 1..20"),
        ({"trImgCat": np.ones((39, 1))}, r"key 'trImgCat' has shape \(39, 1\), expected \(40, 1\)"),
        ({"V_te_CNN": np.zeros((90, 7))}, "V_tr_CNN has 6 columns but V_te_CNN has 7"),
    ],
)
def test_convert_xmedia_bad_files(tmp_path, change, match):
    arrays = _xmedia_arrays()
    for k, v in change.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    path = tmp_path / "XMediaFeatures.mat"
    scipy.io.savemat(path, arrays)
    with pytest.raises(InputError, match=match):
        convert_xmedia(str(path), str(tmp_path / "xm"))
    assert os.listdir(tmp_path) == ["XMediaFeatures.mat"]  # nothing written, no temp dirs


def test_convert_xmedia_missing_or_garbage_file(tmp_path):
    with pytest.raises(MissingError, match="nope.mat: file not found"):
        convert_xmedia(str(tmp_path / "nope.mat"), str(tmp_path / "xm"))
    (tmp_path / "bad.mat").write_bytes(b"\x01\x02garbage" * 20)
    with pytest.raises(InputError, match="bad.mat: not a readable MATLAB .mat file"):
        convert_xmedia(str(tmp_path / "bad.mat"), str(tmp_path / "xm"))


@pytest.mark.parametrize("content", [b"", b"abc"])
def test_an_empty_or_truncated_mat_is_one_line(tmp_path, content):
    """0- and 3-byte files raised scipy's MatReadError as a traceback (issue #14, defect 8)."""
    (tmp_path / "cut.mat").write_bytes(content)
    with pytest.raises(InputError, match=rf"cut.mat: not a readable MATLAB .mat file \({len(content)} bytes"):
        convert_xmedia(str(tmp_path / "cut.mat"), str(tmp_path / "xm"))
    assert sorted(os.listdir(tmp_path)) == ["cut.mat"]


def test_nan_in_the_mat_is_named_by_input_file_key_row_and_column(tmp_path):
    """#14 defect 8: it was reported against the output parquet, which is never written."""
    arrays = _xmedia_arrays()
    arrays["A_te"][7, 2] = np.nan
    path = tmp_path / "XMediaFeatures.mat"
    scipy.io.savemat(path, arrays)
    with pytest.raises(InputError, match=rf"^{path}: key 'A_te' has nan at row 7, column 2; features"):
        convert_xmedia(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
