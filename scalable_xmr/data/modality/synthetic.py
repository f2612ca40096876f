"""SYNTHETIC XMedia-shaped data -- NOT real data; numbers measured on it say nothing about XMedia.

It exists so that every part of scalable_xmr (training, sweeps, adding a modality, evaluation) runs
end to end without the real PKU XMedia file. Shapes follow SDML Table 1: 20 classes; image 4096,
text 3000, audio 29, 3d 4700, video 4096; train/val/test 4000/500/500, 4000/500/500, 800/100/100,
400/50/50, 969/87/87 (``scale="full"``). ``scale="small"`` keeps the five modalities and 20 classes
with tiny dims and sizes for tests.

How a row is made (deterministic from ``seed``):

1. 20 class prototypes in a shared 16-d latent space, built hierarchically (5 groups of 4 classes
   that share a group centre), so some classes overlap much more than others.
2. A row of class y draws ``z = prototype[y'] + noise`` where y' = y except for ~8% of rows
   (label noise: content of another class), plus 8 private nuisance dimensions per modality.
3. A random per-modality two-layer map (tanh, then a modality-specific read-out) turns z into
   features: ReLU "CNN" activations (image, video), non-negative sparse Poisson counts (text, like
   bag-of-words), signed large-scale "MFCC" values (audio), small non-negative "LightField" values
   (3d) -- scales differ by orders of magnitude across modalities, as real features do.

A linear probe on raw train features reaches a clearly-above-chance but far-from-perfect test mAP
(tests/data/test_synthetic.py checks both), so retrieval results are informative, not trivial.
"""

from __future__ import annotations

import numpy as np

from scalable_xmr.data.modality.dataset import Dataset, DatasetInfo, ModalityInfo, write_dataset
from scalable_xmr.errors import InputError

N_CLASSES = 20
CLASS_NAMES = tuple(f"class_{i:02d}" for i in range(N_CLASSES))
MODALITIES = ("image", "text", "audio", "3d", "video")
# scale -> modality -> (dim, (train, val, test)); "full" = SDML Table 1 (PKU XMedia)
SHAPES: dict[str, dict[str, tuple[int, tuple[int, int, int]]]] = {
    "full": {
        "image": (4096, (4000, 500, 500)),
        "text": (3000, (4000, 500, 500)),
        "audio": (29, (800, 100, 100)),
        "3d": (4700, (400, 50, 50)),
        "video": (4096, (969, 87, 87)),
    },
    # "small": every train split holds at least one default batch (100 rows, SDML §4.2), so
    # `xmr data synthetic --scale small` trains with default flags.
    "small": {
        "image": (64, (120, 30, 30)),
        "text": (80, (120, 30, 30)),
        "audio": (16, (100, 20, 20)),
        "3d": (48, (100, 20, 20)),
        "video": (64, (100, 20, 20)),
    },
}
LATENT_DIM = 16  # shared class space
PRIVATE_DIM = 8  # per-modality nuisance factors
HIDDEN_DIM = 64  # width of the random nonlinear map
LATENT_NOISE = 1.1  # std of within-class spread (prototypes have unit-scale coordinates)
LABEL_NOISE = 0.08  # fraction of rows whose content comes from another class
TEXT_MEAN_COUNT = 0.04  # mean BoW count per entry: ~96% zeros


def _prototypes(seed: int) -> np.ndarray:
    """(20, LATENT_DIM): 5 group centres + per-class offsets -> uneven class overlap."""
    rng = np.random.default_rng([seed, 7919])
    groups = rng.standard_normal((N_CLASSES // 4, LATENT_DIM))  # (5, k)
    own = rng.standard_normal((N_CLASSES, LATENT_DIM))  # (20, k)
    return (0.8 * groups[np.arange(N_CLASSES) // 4] + 0.9 * own).astype(np.float32)


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % N_CLASSES)  # (n,) as even as n allows


def _read_out(name: str, h: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Modality-specific features from hidden codes h (n, HIDDEN_DIM); float32 (n, dim)."""
    n = len(h)
    w = rng.standard_normal((HIDDEN_DIM, dim), dtype=np.float32) / np.sqrt(HIDDEN_DIM)
    a = h @ w  # (n, dim), unit-ish scale
    if name == "text":  # BoW-like counts: Poisson with log-rate a + bias
        bias = np.float32(np.log(TEXT_MEAN_COUNT) - 0.5)
        a *= np.float32(1.2)
        a += bias
        rate = np.exp(np.minimum(a, 5.0, out=a), out=a)  # (n, dim), clipped: rate <= e^5
        return rng.poisson(rate).astype(np.float32)
    a += rng.standard_normal((n, dim), dtype=np.float32)  # in place (80 MB at full scale)
    if name in ("image", "video"):  # fc7-like: non-negative, about half zeros
        a -= np.float32(0.1)
        return np.maximum(a, 0.0, out=a)
    if name == "audio":  # MFCC-like: signed, large and uneven per-coefficient scale
        return a * rng.uniform(2.0, 30.0, size=dim).astype(np.float32)
    return np.abs(a, out=a) * np.float32(0.02)  # 3d: small non-negative descriptors


def synthetic_modality(
    name: str, scale: str = "small", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One SYNTHETIC modality: ``(ids, splits, labels (n,) int64, features float32 (n, dim))``."""
    if scale not in SHAPES:
        raise InputError(f"scale must be one of {sorted(SHAPES)}, got {scale!r}")
    if name not in MODALITIES:
        raise InputError(f"synthetic modality must be one of {MODALITIES}, got {name!r}")
    dim, sizes = SHAPES[scale][name]
    rng = np.random.default_rng([seed, MODALITIES.index(name)])
    labels = np.concatenate([_balanced_labels(k, rng) for k in sizes])  # (n,)
    n = len(labels)
    content = labels.copy()
    flip = rng.random(n) < LABEL_NOISE
    content[flip] = rng.integers(0, N_CLASSES, size=int(flip.sum()))  # label noise
    z = _prototypes(seed)[content]  # (n, k)
    z = z + LATENT_NOISE * rng.standard_normal((n, LATENT_DIM), dtype=np.float32)
    private = 1.5 * rng.standard_normal((n, PRIVATE_DIM), dtype=np.float32)  # nuisance
    zin = np.concatenate([z, private], axis=1)  # (n, k + p)
    w1 = rng.standard_normal((LATENT_DIM + PRIVATE_DIM, HIDDEN_DIM), dtype=np.float32)
    h = np.tanh(zin @ (w1 / np.float32(np.sqrt(LATENT_DIM))))  # (n, HIDDEN_DIM)
    features = _read_out(name, h, dim, rng).astype(np.float32, copy=False)
    splits = np.repeat(np.array(["train", "val", "test"], dtype=object), sizes)
    ids = np.array([f"{name}-{i:05d}" for i in range(n)], dtype=object)
    return ids, splits, labels, np.ascontiguousarray(features)


def synthetic_xmedia_info(scale: str = "small") -> DatasetInfo:
    """The ``DatasetInfo`` of :func:`make_synthetic_xmedia` at ``scale``."""
    if scale not in SHAPES:
        raise InputError(f"scale must be one of {sorted(SHAPES)}, got {scale!r}")
    modalities = {m: ModalityInfo(m, SHAPES[scale][m][0]) for m in MODALITIES}
    return DatasetInfo(f"synthetic-xmedia-{scale}", N_CLASSES, False, CLASS_NAMES, modalities)


def make_synthetic_xmedia(
    out: str, scale: str = "full", seed: int = 0, overwrite: bool = False
) -> Dataset:
    """Write a SYNTHETIC XMedia-shaped dataset to ``out`` (see the module docstring)."""
    info = synthetic_xmedia_info(scale)
    tables = {m: synthetic_modality(m, scale, seed) for m in MODALITIES}
    return write_dataset(out, info, tables, overwrite=overwrite)
