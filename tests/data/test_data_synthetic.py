"""Synthetic XMedia-shaped data: shapes, determinism, BoW-like text, 'learnable, not trivial'."""

from __future__ import annotations

import numpy as np
import pytest

from scalable_xmr.data import make_synthetic_xmedia, open_dataset, synthetic_modality
from scalable_xmr.data.modality.synthetic import SHAPES

TABLE_1 = {  # SDML Table 1, PKU XMedia: dim, train/val/test
    "image": (4096, (4000, 500, 500)),
    "text": (3000, (4000, 500, 500)),
    "audio": (29, (800, 100, 100)),
    "3d": (4700, (400, 50, 50)),
    "video": (4096, (969, 87, 87)),
}


def _ap(scores, relevant):
    """Average precision of one ranking, by a plain loop (ties broken by index)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            total += hits / rank
    return total / max(hits, 1)


def _linear_probe_map(ids_splits_labels_x, n_classes=20, ridge=100.0):
    """Ridge least squares from standardised raw features to one-hot; class-wise test mAP."""
    _, splits, labels, x = ids_splits_labels_x
    tr, te = splits == "train", splits == "test"
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))].astype(np.float64)
    y = np.eye(n_classes)[labels]
    w = np.linalg.solve(z[tr].T @ z[tr] + ridge * np.eye(z.shape[1]), z[tr].T @ y[tr])
    scores = z[te] @ w
    aps = [_ap(scores[:, c], labels[te] == c) for c in range(n_classes) if (labels[te] == c).any()]
    return float(np.mean(aps))


def test_small_shapes_and_dataset(tmp_path):
    ds = make_synthetic_xmedia(str(tmp_path / "syn"), scale="small", seed=0)
    ds = open_dataset(str(tmp_path / "syn"))
    assert ds.modalities == ["image", "text", "audio", "3d", "video"]
    assert ds.info.n_classes == 20 and "synthetic" in ds.info.name
    for m, (dim, (n_tr, n_va, n_te)) in SHAPES["small"].items():
        assert ds.info.modalities[m].dim == dim
        assert ds.split_sizes()[m] == {"train": n_tr, "val": n_va, "test": n_te}
        test = ds.read_split(m, "test")
        assert test.features.dtype == np.float32 and test.features.shape == (n_te, dim)
        assert (test.labels.sum(1) == 1).all()


def test_full_scale_shapes_match_sdml_table_1():
    assert SHAPES["full"] == TABLE_1
    ids, splits, labels, x = synthetic_modality("audio", "full", seed=0)  # the cheap one
    assert x.shape == (1000, 29) and x.dtype == np.float32
    assert [int((splits == s).sum()) for s in ("train", "val", "test")] == [800, 100, 100]
    assert np.bincount(labels[splits == "train"]).tolist() == [40] * 20  # balanced classes


def test_deterministic_from_seed():
    a = synthetic_modality("video", "small", seed=3)
    b = synthetic_modality("video", "small", seed=3)
    c = synthetic_modality("video", "small", seed=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[3], c[3])


def test_text_is_bag_of_words_like_and_scales_differ():
    text = synthetic_modality("text", "small", seed=0)[3]
    assert (text >= 0).all() and np.array_equal(text, np.round(text))  # counts
    assert (text == 0).mean() > 0.8  # sparse
    assert (text > 0).any(axis=1).mean() > 0.5  # but most documents have words
    image = synthetic_modality("image", "small", seed=0)[3]
    assert (image >= 0).all() and 0.2 < (image == 0).mean() < 0.8  # ReLU activations
    audio = synthetic_modality("audio", "small", seed=0)[3]
    shape3d = synthetic_modality("3d", "small", seed=0)[3]
    assert audio.std() > 100 * shape3d.std()  # like MFCC vs LightField scales


@pytest.mark.parametrize("name", ["image", "text", "audio", "3d", "video"])
def test_linear_probe_is_not_perfect(name):
    probe_map = _linear_probe_map(synthetic_modality(name, "small", seed=0))
    assert probe_map < 0.9, probe_map


def test_learnable_above_chance():
    """On the (cheap) full-scale audio modality a linear probe is far above chance (~0.07)."""
    probe_map = _linear_probe_map(synthetic_modality("audio", "full", seed=0))
    assert 0.2 < probe_map < 0.9, probe_map
    small = [_linear_probe_map(synthetic_modality(m, "small", seed=0)) for m in SHAPES["small"]]
    assert np.mean(small) > 0.2, small


@pytest.mark.slow
def test_full_scale_generation():
    for name, (dim, sizes) in TABLE_1.items():
        ids, splits, labels, x = synthetic_modality(name, "full", seed=0)
        assert x.shape == (sum(sizes), dim) and x.dtype == np.float32 and np.isfinite(x).all()
        assert len(set(ids)) == len(ids)
