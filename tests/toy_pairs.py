"""A toy image-text task for the branch-model tests (MMCA, VSA): regions and words of shared concepts."""

from __future__ import annotations

import numpy as np
import torch


def make_pairs(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images of 4 regions x 16 dims and one caption each over a 30-word vocabulary.

    Image j shows 3 of 20 concepts (a distinct set per image): 3 regions are noisy prototypes of
    its concepts (prototypes fixed across seeds), one region is clutter. Its caption names the 3
    concepts (ids 1-20) in random order, with 1-2 filler words (ids 21-29) mixed in.
    Returns (images (n, 4, 16), tokens (n, 5), lengths (n,)).
    """
    protos = np.random.default_rng(0).normal(size=(21, 16))
    rng = np.random.default_rng(seed)
    sets: set[tuple[int, ...]] = set()
    while len(sets) < n:
        sets.add(tuple(sorted(rng.choice(np.arange(1, 21), 3, replace=False))))
    images, tokens = np.zeros((n, 4, 16)), np.zeros((n, 5), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for j, concepts in enumerate(sorted(sets)):
        regions = [protos[c] + 0.3 * rng.normal(size=16) for c in concepts]
        images[j] = rng.permutation(np.stack([*regions, rng.normal(size=16)]))
        words = rng.permutation(list(concepts) + list(rng.integers(21, 30, rng.integers(1, 3))))
        tokens[j, : len(words)], lengths[j] = words, len(words)
    return torch.tensor(images, dtype=torch.float32), torch.tensor(tokens), torch.tensor(lengths)


def recall_at(sim: torch.Tensor, k: int) -> tuple[float, float]:
    """R@k of image->text and text->image when pair j is (image j, text j), by plain argsort."""
    target = torch.arange(sim.shape[0])
    i2t = (sim.argsort(dim=1, descending=True)[:, :k] == target[:, None]).any(1).float().mean()
    t2i = (sim.argsort(dim=0, descending=True)[:k, :] == target[None, :]).any(0).float().mean()
    return float(i2t), float(t2i)


def without_captions(root, split: str):
    """The paired dataset at ``root`` with every caption of ``split`` removed and its images kept:
    a split without image-caption pairs. Returns ``root``."""
    from pathlib import Path

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(root) / "captions.parquet"
    table = pq.read_table(path)
    pq.write_table(table.filter(pc.not_equal(table["split"], split)), path)
    return root
