"""Image-text R@K, median and mean rank (the VSE++ protocol), and the COCO 1K folds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval.checks import (
    BLOCK_ELEMENTS,
    ArrayLike,
    as_float_matrix,
    check_positive_int,
    chunk_ranges,
)
from scalable_xmr.functional.retrieval.ranking import stable_rank


def _check_sim(sim: ArrayLike, captions_per_image: int) -> torch.Tensor:
    n = check_positive_int(captions_per_image, "captions_per_image")
    s = as_float_matrix(sim, "sim")
    if s.shape[1] != s.shape[0] * n:
        raise InputError(
            f"sim has shape {tuple(s.shape)}: expected {s.shape[0]} images x "
            f"{s.shape[0] * n} captions ({n} captions_per_image, caption j -> image j // {n})"
        )
    return s


def _ranks_i2t(sim: torch.Tensor, n: int) -> torch.Tensor:
    """0-based rank, per image, of its best-ranked caption (VSE++ i2t)."""
    n_img, n_txt = sim.shape
    out = []
    for r0, r1 in chunk_ranges(n_img, max(1, BLOCK_ELEMENTS // n_txt)):
        block = sim[r0:r1]  # (B, T) view
        own = torch.arange(r0 * n, r1 * n).view(r1 - r0, n)  # (B, n) the image's captions
        # The best-ranked of its captions is the first maximum (lowest index among ties), so one
        # stable rank per image equals the minimum of the n ranks.
        best = own.gather(1, block.gather(1, own).argmax(1, keepdim=True))[:, 0]  # (B,)
        out.append(stable_rank(block, best))
    return torch.cat(out)


def _ranks_t2i(sim: torch.Tensor, n: int) -> torch.Tensor:
    """0-based rank, per caption, of its image j // n in that caption's image ranking (VSE++)."""
    n_img, n_txt = sim.shape
    out = []
    for c0, c1 in chunk_ranges(n_txt, max(1, BLOCK_ELEMENTS // n_img)):
        block = sim[:, c0:c1]  # (N, B) view, one column per caption
        out.append(stable_rank(block, torch.arange(c0, c1) // n, dim=0))
    return torch.cat(out)


def _recall_metrics(ranks: torch.Tensor, prefix: str, ks: Sequence[int]) -> dict[str, float]:
    r = ranks.numpy()
    out = {f"{prefix}@{k}": 100.0 * float(np.mean(r < k)) for k in ks}
    # VSE++ (evaluation.py): medr = floor(median(0-based ranks)) + 1, meanr = mean + 1.
    out[f"{prefix}_medr"] = float(np.floor(np.median(r)) + 1)
    out[f"{prefix}_meanr"] = float(r.mean() + 1)
    return out


def recall_at_k(
    sim: ArrayLike, captions_per_image: int = 5, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image-text R@K, median and mean rank, rsum (the VSE++ protocol, ranks stable by index).

    ``sim`` is (N images, N * captions_per_image captions); caption j belongs to image j // n.
    I2T rank of image i: best 0-based rank among its n captions in row i; T2I rank of caption j:
    0-based rank of image j // n in column j. Recalls ``i2t@k`` / ``t2i@k`` are percentages
    (0..100) of ranks < k; ``*_medr`` = floor(median(0-based ranks)) + 1 and ``*_meanr`` =
    mean(0-based ranks) + 1 (both 1-based as VSE++ reports them); ``rsum`` = sum of all recalls.
    Works on row / column chunks of ``sim``; nothing of its size is allocated.

    Example:
        >>> import numpy as np
        >>> sim = np.array([[0.9, 0.1, 0.8, 0.3],   # image 0 owns captions 0, 1
        ...                 [0.2, 0.7, 0.6, 0.4]])  # image 1 owns captions 2, 3
        >>> # I2T ranks: image 0 -> caption 0 first (0); image 1 -> caption 2 second (1).
        >>> # T2I ranks: captions 0..3 put their image at 0, 1, 1, 0.
        >>> m = recall_at_k(sim, captions_per_image=2, ks=(1, 2))
        >>> m["i2t@1"], m["i2t@2"], m["t2i@1"], m["t2i_medr"], m["t2i_meanr"], m["rsum"]
        (50.0, 100.0, 50.0, 1.0, 1.5, 300.0)
    """
    s = _check_sim(sim, captions_per_image)
    ks = [check_positive_int(k, "ks") for k in ks]
    out = _recall_metrics(_ranks_i2t(s, captions_per_image), "i2t", ks)
    out.update(_recall_metrics(_ranks_t2i(s, captions_per_image), "t2i", ks))
    out["rsum"] = sum(out[f"{d}@{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def recall_at_k_folds(
    sim: ArrayLike, captions_per_image: int = 5, n_folds: int = 5, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """COCO "1K" protocol: `recall_at_k` on each of ``n_folds`` consecutive image folds (and their
    captions), every metric averaged over folds (as VSE++ does for rsum, medr and meanr too)."""
    s = _check_sim(sim, captions_per_image)
    n_folds = check_positive_int(n_folds, "n_folds")
    n_img, n = s.shape[0], captions_per_image
    if n_img % n_folds:
        raise InputError(f"sim has {n_img} images, not divisible into n_folds={n_folds} folds")
    m = n_img // n_folds
    folds = [recall_at_k(s[f * m : (f + 1) * m, f * m * n : (f + 1) * m * n], n, ks)
             for f in range(n_folds)]
    return {key: float(np.mean([fold[key] for fold in folds])) for key in folds[0]}
