"""Sources of paired image-text datasets (docs/data.md), split out of ``data/paired.py``.

- :func:`convert_precomp`: the SCAN/VSE++ "precomp" layout (``{split}_ims.npy`` + ``{split}_caps.txt``);
- :func:`make_synthetic_pairs`: region features and token captions from shared latent concepts;
- :func:`mfeat_pairs`: two views of the UCI mfeat digits as image / dense-"caption" pairs;
- :func:`tokenize`, :func:`build_vocab`: the caption tokeniser and the train-only vocabulary.

``data/paired.py`` re-exports every public name here.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scalable_xmr.data.modality.mfeat import load_mfeat_views
from scalable_xmr.data.paired.format import CAPTIONS_FILE, IMAGES_FILE, PAD, UNK, VOCAB_FILE
from scalable_xmr.data.paired.writer import captions_table, images_table, write_paired_dataset
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import atomic_path

__all__ = ["convert_precomp", "make_synthetic_pairs", "mfeat_pairs", "tokenize", "build_vocab"]

_TOKEN_RE = re.compile(r"\w+(?:'\w+)?|[^\w\s]")
_PRECOMP_SPLITS = {"train": "train", "dev": "val"}


def tokenize(text: str) -> list[str]:
    """Lowercase words (with in-word apostrophes) and single punctuation marks.

    Example:
        >>> tokenize("A man's dog, running.")
        ['a', "man's", 'dog', ',', 'running', '.']
    """
    return _TOKEN_RE.findall(text.lower())


def build_vocab(captions: Sequence[Sequence[str]], min_count: int = 4) -> list[str]:
    """``[<pad>, <unk>]`` + words seen >= ``min_count`` times, most frequent first (ties A-Z)."""
    if not isinstance(min_count, int) or min_count < 1:
        raise InputError(f"min_count: must be an integer >= 1, got {min_count!r}")
    counts = Counter(w for words in captions for w in words)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, UNK, *kept]


def _read_caption_lines(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    words = [tokenize(line) for line in lines]
    for i, w in enumerate(words):
        if not w:
            raise InputError(f"{path}: line {i + 1} is an empty caption")
    return words


def _precomp_blocks(ims: np.ndarray, per_image: int, n_caps: int, path: Path, chunk: int = 1024):
    """Yield image arrays in chunks; de-duplicates files that repeat each image per caption."""
    n = ims.shape[0]
    if n_caps == n * per_image:
        for s in range(0, n, chunk):
            yield np.asarray(ims[s : s + chunk], np.float32)
    elif n_caps == n and n % per_image == 0:  # VSE++ "im_div = 1" layout: one row per caption
        for s in range(0, n, chunk * per_image):
            block = np.asarray(ims[s : s + chunk * per_image], np.float32)
            grouped = block.reshape(-1, per_image, *block.shape[1:])
            if not (grouped == grouped[:, :1]).all():
                raise InputError(
                    f"{path}: {n} image rows for {n_caps} captions, but rows of "
                    f"one image (blocks of {per_image}) differ"
                )
            yield grouped[:, 0]
    else:
        raise InputError(
            f"{path}: {n} images for {n_caps} captions; expected "
            f"{n * per_image} caption lines ({per_image} per image)"
        )


def convert_precomp(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    min_count: int = 4,
    captions_per_image: int = 5,
    test_split: str = "test",
    overwrite: bool = False,
) -> Path:
    """Convert the SCAN/VSE++ precomp layout to a paired dataset.

    ``src`` holds ``{split}_ims.npy`` ((N, 36, 2048) regions or (N, D) vectors; memory-mapped and
    streamed) and ``{split}_caps.txt`` (``captions_per_image`` consecutive lines per image) for
    splits train, dev (-> val) and ``test_split`` (-> test; "testall" for COCO 5K). The
    vocabulary is built from the TRAIN captions only (words seen >= ``min_count`` times; VSE++
    uses 4); other words become <unk>.
    """
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass overwrite=True to replace it)")
    names = {**_PRECOMP_SPLITS, test_split: "test"}
    found = {}
    for name, split in names.items():
        ims, caps = src / f"{name}_ims.npy", src / f"{name}_caps.txt"
        if ims.exists() != caps.exists() or (name == "train" and not ims.exists()):
            raise MissingError(f"{src}: {ims.name if not ims.exists() else caps.name} not found")
        if ims.exists():
            found[split] = (ims, caps)
    words = {split: _read_caption_lines(caps) for split, (_, caps) in found.items()}
    vocab = build_vocab(words["train"], min_count)
    index = {w: i for i, w in enumerate(vocab)}
    image_shape, writer = None, None
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, (ims_path, caps_path) in found.items():
            ims = np.load(ims_path, mmap_mode="r")
            image_shape = image_shape or ims.shape[1:]
            if ims.ndim not in (2, 3) or ims.shape[1:] != image_shape:
                raise InputError(
                    f"{ims_path}: array shape {ims.shape} does not match "
                    f"(N, {', '.join(map(str, image_shape))}) of the other splits"
                )
            row = 0
            for block in _precomp_blocks(ims, captions_per_image, len(words[split]), caps_path):
                ids = [f"{split}/{i:06d}" for i in range(row, row + len(block))]
                table = images_table(ids, [split] * len(ids), block, str(ims_path))
                writer = writer or pq.ParquetWriter(tmp / IMAGES_FILE, table.schema)
                writer.write_table(table)
                row += len(block)
        writer.close()
        splits = [s for s in found for _ in words[s]]
        per_split = [j for s in found for j in range(len(words[s]))]
        image_ids = [f"{s}/{j // captions_per_image:06d}" for s, j in zip(splits, per_split, strict=True)]
        caption_ids = [f"{i}#{j % captions_per_image}" for i, j in zip(image_ids, per_split, strict=True)]
        all_words = [ws for s in found for ws in words[s]]
        tokens = [[index.get(w, 1) for w in ws] for ws in all_words]
        table = captions_table(
            caption_ids, image_ids, splits, tokens, text=[" ".join(ws) for ws in all_words]
        )
        pq.write_table(table, tmp / CAPTIONS_FILE)
        (tmp / VOCAB_FILE).write_text(json.dumps(vocab) + "\n", encoding="utf-8")
    return out


def _split_names(n_train: int, n_val: int, n_test: int) -> list[str]:
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 0:
            raise InputError(f"{name}: must be an integer >= 0, got {n!r}")
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def _synthetic_regions(
    rng: np.random.Generator,
    concept_z: np.ndarray,
    strength: np.ndarray,
    n_regions: int,
    to_pixels: np.ndarray,
) -> np.ndarray:
    """(n_regions, dim): each region one of the k concepts or clutter, every concept at least once."""
    k, latent = concept_z.shape
    shown = rng.integers(0, k + 1, size=n_regions)  # k = background clutter
    shown[:k] = np.arange(k)[:n_regions]  # every concept is visible in some region
    shown = rng.permutation(shown)
    z = 0.3 * rng.standard_normal((n_regions, latent)).astype(np.float32)
    obj = shown < k
    z[obj] += strength[shown[obj], None] * concept_z[shown[obj]]
    noise = 0.2 * rng.standard_normal((n_regions, to_pixels.shape[1]))
    return np.maximum(z @ to_pixels + noise, 0.0)


def _synthetic_caption(
    rng: np.random.Generator,
    concepts: np.ndarray,
    strength: np.ndarray,
    n_words: int,
    filler: np.ndarray,
) -> list[int]:
    """4-12 tokens: ~60% synonyms of the image's concepts (by strength), filler, 5% swapped."""
    length = int(rng.integers(4, 13))
    n_content = max(1, int(rng.binomial(length, 0.6)))
    picked = rng.choice(concepts, size=n_content, p=strength / strength.sum())
    words = list(2 + 3 * picked + rng.integers(0, 3, size=n_content))  # concept c owns 2+3c..4+3c
    words += list(rng.choice(filler, size=length - n_content))
    swap = rng.random(length) < 0.05
    words = np.where(swap, rng.integers(2, 2 + n_words, size=length), words)
    return [int(w) for w in rng.permutation(words)]


def make_synthetic_pairs(
    out: str | os.PathLike,
    seed: int = 0,
    n_train: int = 1000,
    n_val: int = 100,
    n_test: int = 100,
    n_regions: int = 8,
    dim: int = 64,
    captions_per_image: int = 5,
    vocab_size: int = 200,
    n_concepts: int = 20,
    overwrite: bool = False,
) -> Path:
    """Region features and token captions generated from shared latent concepts.

    Each image holds 2-3 of ``n_concepts`` latent concepts with random strengths. A region shows
    one of them or background clutter (each concept in at least one region when n_regions >= 3):
    relu(A·(w_c z_c + noise) + noise), A a fixed random map to ``dim``. Each concept owns 3
    synonymous words; a caption (4-12 words, ~60% content words) mentions the image's concepts
    (stronger ones more often) among filler words, with 5% of words swapped for a random concept
    word. Images with the same concept set can only be told apart by strengths
    and noise, so retrieval is learnable but R@1 stays well below 100.
    """
    splits = _split_names(n_train, n_val, n_test)
    n_words = 3 * n_concepts
    if n_concepts < 3 or vocab_size < 2 + n_words + 5:
        raise InputError(
            f"vocab_size: {vocab_size} too small for {n_concepts} concepts "
            f"(needs >= {2 + n_words + 5}; n_concepts >= 3)"
        )
    if min(n_regions, dim, captions_per_image) < 1:
        raise InputError("n_regions, dim and captions_per_image must be >= 1")
    rng = np.random.default_rng(seed)
    latent = min(dim, 32)
    concept_z = rng.standard_normal((n_concepts, latent)).astype(np.float32)
    to_pixels = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    filler = np.arange(2 + n_words, vocab_size)
    vocab = [PAD, UNK] + [f"c{c}_{k}" for c in range(n_concepts) for k in range(3)]
    vocab += [f"w{i}" for i in range(len(filler))]
    n = len(splits)
    regions = np.empty((n, n_regions, dim), np.float32)
    tokens: list[list[int]] = []
    for i in range(n):
        k = int(rng.integers(2, 4))
        concepts = rng.choice(n_concepts, size=k, replace=False)
        strength = rng.uniform(0.5, 1.5, size=k).astype(np.float32)
        regions[i] = _synthetic_regions(rng, concept_z[concepts], strength, n_regions, to_pixels)
        for _ in range(captions_per_image):
            tokens.append(_synthetic_caption(rng, concepts, strength, n_words, filler))
    image_ids = [f"img{i:06d}" for i in range(n)]
    cap_image = [image_ids[i // captions_per_image] for i in range(len(tokens))]
    captions = {
        "caption_id": [f"{img}#{j % captions_per_image}" for j, img in enumerate(cap_image)],
        "image_id": cap_image,
        "tokens": tokens,
        "text": [" ".join(vocab[t] for t in ts) for ts in tokens],
    }
    images = {"image_id": image_ids, "split": splits, "regions": regions}
    return write_paired_dataset(out, images, captions, vocab, overwrite=overwrite)


def mfeat_pairs(
    out: str | os.PathLike,
    view_a: str = "fou",
    view_b: str = "pix",
    seed: int = 0,
    standardize: bool = True,
    overwrite: bool = False,
) -> Path:
    """UCI multiple-features digits as paired data: view_a = "image", view_b = dense "caption".

    Two views of the same digit instance are the matching pair (1 caption per image; another
    instance of the same digit is a negative). A seeded 60/20/20 train/val/test split.
    ``standardize`` rescales each feature with train-split mean/std (raw mfeat scales differ by
    orders of magnitude across views).
    """

    views, _labels = load_mfeat_views()
    for arg, v in (("view_a", view_a), ("view_b", view_b)):
        if v not in views:
            raise InputError(f"{arg}: unknown mfeat view {v!r} (available: {sorted(views)})")
    if view_a == view_b:
        raise InputError(f"view_a, view_b: must differ, both are {view_a!r}")
    n = len(_labels)
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(0.6 * n)), int(round(0.2 * n))
    splits = np.empty(n, dtype=object)
    splits[perm] = _split_names(n_train, n_val, n - n_train - n_val)
    train = splits == "train"
    a, b = (np.asarray(views[v], np.float64) for v in (view_a, view_b))
    if standardize:
        a, b = ((x - x[train].mean(0)) / np.where(x[train].std(0) > 0, x[train].std(0), 1.0) for x in (a, b))
    ids = [f"mfeat{i:04d}" for i in range(n)]
    images = {"image_id": ids, "split": list(splits), "features": a.astype(np.float32)}
    captions = {"caption_id": [f"{i}#0" for i in ids], "image_id": ids, "features": b.astype(np.float32)}
    return write_paired_dataset(out, images, captions, None, overwrite=overwrite)
