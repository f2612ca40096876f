"""SDML's objective (SDML Eq. 1), a pure function of tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch


def sdml_loss(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    P: torch.Tensor,
    y: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDML Eq. (1) for one batch: λ·mean_i ‖x̂ᵢ − xᵢ‖₂ + (1−λ)·mean_{labeled i} ‖Pᵀhᵢ − yᵢ‖₂.

    Norms are per-sample L2 norms, not squared (Eq. 1 writes ‖·‖₂). Rows whose ``y`` is all zeros
    are unlabeled and contribute only the reconstruction term (docs/data.md); a batch without any
    labeled row has label term 0.

    Args:
        x_hat, x: reconstruction and input, (B, dim).
        h: common representation, (B, d).
        P: fixed projection, (d, c).
        y: one-hot or multi-hot targets, (B, c) float.
    Returns:
        (total, reconstruction term, label term), each a scalar tensor.
    """
    n_labeled = (y.sum(dim=1) > 0).sum()
    return sdml_loss_share(x_hat, x, h, P, y, lam, len(x), n_labeled)


def sdml_loss_share(x_hat: torch.Tensor, x: torch.Tensor, h: torch.Tensor, P: torch.Tensor, y: torch.Tensor,
                    lam: float, batch_size: int, n_labeled: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The share of :func:`sdml_loss` that rows ``x`` hold in a batch of ``batch_size`` rows of
    which ``n_labeled`` (a count tensor) are labeled: the batch's sums over these rows divided by the
    whole batch's counts. The shares of disjoint row sets covering the batch add up to
    :func:`sdml_loss` of the batch (a data-parallel worker's part of a global batch; the whole
    batch is its own share).

    Returns:
        (total, reconstruction term, label term) shares, each a scalar tensor.
    """
    recon = (x_hat - x).norm(dim=1).sum() / batch_size  # J_r: sum here / rows of the batch
    residual = (h @ P - y).norm(dim=1)  # ‖Pᵀh − y‖₂ per sample: (B,)
    labeled = (y.sum(dim=1) > 0).to(residual.dtype)  # (B,)
    label = (residual * labeled).sum() / n_labeled.to(residual.dtype).clamp_min(1.0)  # J_s: labeled rows
    return lam * recon + (1.0 - lam) * label, recon, label


def label_loss_per_sample(h: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖Pᵀhᵢ − yᵢ‖₂ for each row (B,), the validation criterion for model selection."""
    return (h @ P - y).norm(dim=1)


def label_loss_sum(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   P: torch.Tensor, per_sample: Callable[..., torch.Tensor] = label_loss_per_sample,
                   chunk: int = 4096, keep: list[torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of ‖Pᵀh − y‖₂ over the labeled rows of ``x``, how many rows are labeled), h =
    ``encode`` of a chunk of rows. Sums, so that shards of a split (data-parallel workers) add up.

    ``per_sample(h, P, y)`` gives one value per row; a population passes a vmapped one, so that
    ``encode`` may return (..., rows, d) and the sum keeps the leading (member) dims. With
    ``keep``, each chunk's h is appended to it (the embeddings, for whoever scores them next).
    """
    labeled = y.sum(1) > 0
    total = x.new_zeros(())
    for i in range(0, len(x), chunk):
        h = encode(x[i : i + chunk])
        if keep is not None:
            keep.append(h)
        total = total + (per_sample(h, P, y[i : i + chunk]) * labeled[i : i + chunk]).sum(-1)
    return total, labeled.sum()


def mean_label_loss(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    P: torch.Tensor, per_sample: Callable[..., torch.Tensor] = label_loss_per_sample,
                    chunk: int = 4096, keep: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Mean ‖Pᵀh − y‖₂ over the labeled rows of ``x``: :func:`label_loss_sum` over its count."""
    total, count = label_loss_sum(encode, x, y, P, per_sample, chunk, keep)
    return total / count.clamp_min(1)
