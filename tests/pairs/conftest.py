"""Paired datasets shared by the branch-model job tests (built once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_pairs(tmp_path_factory) -> str:
    """Synthetic paired data small enough for a 4-model job on 2 CPUs, with a 100-image test
    split so that chance R@10 stays near 10% (30 concepts: retrieval is learnable in few epochs)."""
    from scalable_xmr.data.paired import make_synthetic_pairs

    out = tmp_path_factory.mktemp("pairs") / "synthetic"
    make_synthetic_pairs(out, seed=5, n_train=200, n_val=50, n_test=100, n_regions=4, dim=32,
                         vocab_size=120, n_concepts=30)
    return str(out)


@pytest.fixture(scope="session")
def mfeat_pair_data(tmp_path_factory) -> str:
    """UCI mfeat (real): fou view as "image", pix view as dense "caption"; 1200/400/400."""
    from scalable_xmr.data.paired import mfeat_pairs

    out = tmp_path_factory.mktemp("pairs") / "mfeat"
    mfeat_pairs(out, view_a="fou", view_b="pix", seed=0)
    return str(out)


@pytest.fixture(scope="session")
def small_configs() -> dict[str, dict]:
    """Model configs of the same architectures, narrow enough for CPU tests."""
    return SMALL


SMALL = {
    "vse": {"embed_dim": 32, "word_dim": 16},
    "mtfn": {"rank": 8, "dim": 64, "word_dim": 16, "text_hidden": 64, "dropout": 0.0, "hinge": "sum"},
    "mmca": {"embed_dim": 16, "n_heads": 2, "n_filters": 8, "text_layers": 1, "max_len": 16,
             "dropout": 0.0, "hinge": "sum"},
    "vsa": {"embed_dim": 32, "word_dim": 16, "conv_channels": [16, 32], "max_len": 16},
}


@pytest.fixture(scope="session")
def chance_r10():
    return chance_r_at_k


def chance_r_at_k(n_images: int, per_image: int, k: int = 10) -> tuple[float, float]:
    """Chance R@k (%) of a random ranking: (i2t, t2i). I2T hits when any of the image's
    ``per_image`` captions is among k of ``n_images * per_image``; T2I when the image is in k."""
    from math import comb

    n_cap = n_images * per_image
    i2t = 1.0 - comb(n_cap - per_image, k) / comb(n_cap, k)
    return 100.0 * i2t, 100.0 * min(k, n_images) / n_images
