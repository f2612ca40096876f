"""SDML's objective (SDML Eq. 1), a pure function of tensors."""

from __future__ import annotations

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
    recon = (x_hat - x).norm(dim=1).mean()  # J_r, averaged over the batch
    residual = (h @ P - y).norm(dim=1)  # ‖Pᵀh − y‖₂ per sample: (B,)
    labeled = (y.sum(dim=1) > 0).to(residual.dtype)  # (B,)
    label = (residual * labeled).sum() / labeled.sum().clamp_min(1.0)  # J_s over labeled rows
    return lam * recon + (1.0 - lam) * label, recon, label


def label_loss_per_sample(h: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖Pᵀhᵢ − yᵢ‖₂ for each row (B,), the validation criterion for model selection."""
    return (h @ P - y).norm(dim=1)
