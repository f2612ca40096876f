"""Streamed ingest (distributed/ray_data.py): the block conversion and the standardisation moments
against NumPy; the moments pass itself on the session's local Ray (slow tier)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from scalable_xmr.config import IngestLimits
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.distributed.ray_data import combine_moments, feature_moments, split_dataset, to_arrays
from scalable_xmr.errors import InputError


def _moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    mean = x.mean(0)
    return len(x), mean, ((x - mean) ** 2).sum(0)


@pytest.mark.parametrize("cuts", [[1], [3, 4], [1, 2, 50, 51, 99]])
def test_moments_of_parts_combine_to_the_whole(cuts):
    rng = np.random.default_rng(0)
    x = rng.normal(1e3, 2.0, (100, 5))  # a large mean: sums of squares would cancel
    parts = [_moments(p) for p in np.split(x, cuts)]
    n, mean, m2 = parts[0]
    for part in parts[1:]:
        n, mean, m2 = combine_moments((n, mean, m2), part)
    assert n == 100
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m2 / n, x.var(0), rtol=1e-9)


def test_a_block_becomes_features_and_multi_hot_labels():
    features = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 2)  # (3, 2)
    table = pa.table({"id": ["a", "b", "c"], "labels": pa.array([[2], [], [0, 3]], pa.list_(pa.int32())),
                      "features": features})
    for block in (table, table.slice(1)):  # a sliced block keeps its own rows
        out = to_arrays(block, dim=2, n_classes=4, with_ids=True)
        expected = {"a": [0, 0, 1, 0], "b": [0, 0, 0, 0], "c": [1, 0, 0, 1]}
        assert list(out["id"]) == block.column("id").to_pylist()
        np.testing.assert_array_equal(out["y"], [expected[i] for i in out["id"]])
        rows = np.arange(6, dtype=np.float32).reshape(3, 2)[3 - len(out["id"]) :]
        np.testing.assert_array_equal(out["x"], rows)
        assert out["x"].dtype == out["y"].dtype == np.float32


def test_ingest_limits_are_checked():
    with pytest.raises(InputError, match="ingest limits must be positive"):
        IngestLimits(cpus=0)
    assert IngestLimits(shuffle_buffer_bytes=4 * 16 * 1000).shuffle_rows(16, 25) == 1000
    assert IngestLimits(shuffle_buffer_bytes=0).shuffle_rows(16, 25) == 25  # at least a batch


@pytest.mark.slow
def test_the_streamed_moments_are_the_train_splits(ray_local, small_xmedia):
    ds = open_dataset(small_xmedia)
    x = ds.read_split("audio", "train").features.astype(np.float64)
    streamed = split_dataset(ds.table_path("audio"), pafs.LocalFileSystem(), "train", x.shape[1], 20,
                             IngestLimits())
    n, mean, var = feature_moments(streamed)
    assert n == len(x)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, x.var(0), rtol=1e-9, atol=1e-12)
