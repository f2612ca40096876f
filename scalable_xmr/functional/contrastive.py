"""Ranking losses for image-text matching and the Gaussian-kernel MMD.

Pure functions of tensors. A score matrix ``sim`` is ``(B, B)`` with rows = images (queries of
image-to-text) and columns = texts; the positive pair of row ``i`` is column ``i`` (the diagonal).

- :func:`hinge_max_violation`: VSE++ (Faghri et al. 2018, Eq. 5 there) / MTFN-RR Eq. 5 — for each
  positive pair only the hardest negative in the batch counts, in both directions.
- :func:`hinge_sum`: the older sum over all negatives (Kiros et al.; VSA, VSA-AE-MMD).
- :func:`mmd_gaussian`: biased MMD² with the kernel exp(-||a - b||² / (2 sigma²)) (VSA, VSA-AE-MMD).

``ignore_mask`` marks off-diagonal pairs that are *not* negatives (e.g. two captions of the same
image in one batch). The reference codes of VSE++ and MTFN have no such mask and count those pairs
as negatives; we exclude them because with several captions per image a batch may hold the same
image twice, and pushing a true match away is a label error, not a hard negative.
"""

from __future__ import annotations

import torch

from scalable_xmr.errors import InputError

__all__ = ["hinge_max_violation", "hinge_sum", "mmd_gaussian"]


def _check_sim(sim: torch.Tensor, margin: float, ignore_mask: torch.Tensor | None) -> None:
    if not isinstance(sim, torch.Tensor) or sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        shape = tuple(sim.shape) if isinstance(sim, torch.Tensor) else type(sim).__name__
        raise InputError(f"sim: expected a square (B, B) score matrix, got {shape}")
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not margin >= 0:
        raise InputError(f"margin: must be a number >= 0, got {margin!r}")
    if ignore_mask is not None and (ignore_mask.shape != sim.shape or ignore_mask.dtype != torch.bool):
        raise InputError(
            f"ignore_mask: expected a bool tensor of shape {tuple(sim.shape)}, "
            f"got {ignore_mask.dtype} {tuple(ignore_mask.shape)}"
        )


def _violations(
    sim: torch.Tensor, margin: float, ignore_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair hinge costs of both directions, 0 where (i, j) is not a negative."""
    pos = sim.diagonal()  # (B,)
    # image i as query: [m - s(i, t_i) + s(i, t_j)]_+  (row-wise)
    cost_txt = (margin - pos[:, None] + sim).clamp(min=0)  # (B, B)
    # text j as query: [m - s(i_j, t_j) + s(i_i, t_j)]_+  (column-wise)
    cost_img = (margin - pos[None, :] + sim).clamp(min=0)  # (B, B)
    not_neg = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    if ignore_mask is not None:
        not_neg = not_neg | ignore_mask
    return cost_txt.masked_fill(not_neg, 0.0), cost_img.masked_fill(not_neg, 0.0)


def _reduce(total: torch.Tensor, batch: int, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / batch
    raise InputError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")


def hinge_max_violation(
    sim: torch.Tensor,
    margin: float = 0.2,
    *,
    ignore_mask: torch.Tensor | None = None,
    bidirectional: bool = True,
    reduction: str = "sum",
) -> torch.Tensor:
    """VSE++ max-of-hinges loss over a ``(B, B)`` score matrix with positives on the diagonal.

    loss = Σ_i max_{j≠i} [m − s_ii + s_ij]_+  +  Σ_j max_{i≠j} [m − s_jj + s_ij]_+
    (MTFN-RR Eq. 5; VSE++ Eq. 5). With ``bidirectional=False`` only the row term is kept (queries
    are rows): MTFN-RR Eq. 7, the text-text triplet loss. ``reduction='sum'`` as both reference
    codes; 'mean' divides by B.

    Example:
        >>> sim = torch.tensor([[0.9, 0.8], [0.1, 0.5]])
        >>> float(hinge_max_violation(sim, margin=0.2))  # rows: .1 + 0 ; columns: 0 + .5
        0.6000000238418579
    """
    _check_sim(sim, margin, ignore_mask)
    cost_txt, cost_img = _violations(sim, margin, ignore_mask)
    total = cost_txt.max(dim=1).values.sum()
    if bidirectional:
        total = total + cost_img.max(dim=0).values.sum()
    return _reduce(total, sim.shape[0], reduction)


def hinge_sum(
    sim: torch.Tensor,
    margin: float = 0.2,
    *,
    ignore_mask: torch.Tensor | None = None,
    bidirectional: bool = True,
    reduction: str = "sum",
) -> torch.Tensor:
    """Sum-of-hinges loss over every negative (Kiros et al. 2014; VSA-AE-MMD Eq. 8).

    loss = Σ_i Σ_{j≠i} [m − s_ii + s_ij]_+  +  Σ_j Σ_{i≠j} [m − s_jj + s_ij]_+
    ``reduction='sum'`` (default) sums Eq. 8 over the batch's positive pairs, as VSA-AE-MMD Eq.
    11-12 sum their per-pair terms (models/vsa.py sums its autoencoder terms the same way); 'mean'
    divides by B.
    """
    _check_sim(sim, margin, ignore_mask)
    cost_txt, cost_img = _violations(sim, margin, ignore_mask)
    total = cost_txt.sum()
    if bidirectional:
        total = total + cost_img.sum()
    return _reduce(total, sim.shape[0], reduction)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(n, m)``, clamped at 0 against rounding."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T  # (n, m)
    return sq.clamp(min=0.0)


def mmd_gaussian(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Biased estimate of MMD² between samples ``x (n, d)`` and ``y (m, d)``.

    MMD² = mean k(x, x') + mean k(y, y') − 2 mean k(x, y), k(a, b) = exp(−||a − b||² / (2σ²)),
    every mean over all pairs including i = j (the biased V-statistic; Gretton et al. 2012).

    Example:
        >>> x = torch.zeros(2, 3)
        >>> float(mmd_gaussian(x, x))
        0.0
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] == 0:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{name}: expected a non-empty 2-D (n, d) tensor, got {shape}")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"x, y: feature dims differ ({x.shape[1]} vs {y.shape[1]})")
    if not isinstance(sigma, int | float) or isinstance(sigma, bool) or not sigma > 0:
        raise InputError(f"sigma: must be a number > 0, got {sigma!r}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    k_xx = torch.exp(-gamma * _sq_dists(x, x)).mean()
    k_yy = torch.exp(-gamma * _sq_dists(y, y)).mean()
    k_xy = torch.exp(-gamma * _sq_dists(x, y)).mean()
    return k_xx + k_yy - 2.0 * k_xy
