"""SDML's deep supervised autoencoder (DSAE), one per modality (SDML §3.1, Fig. 1).

Architecture as the reference code (docs/models.md): encoder dim→1024→1024→d (ReLU between,
linear last layer, output L2-normalised onto the unit sphere of the common space), decoder
d→1024→1024→dim (ReLU between, linear output).

Deviations, and why:
- The reference code L2-normalises the decoder output too. Raw features (CNN activations, BoW
  counts) are not unit vectors, so a normalised reconstruction cannot fit them; the decoder output
  here is linear (docs/models.md).
- Inputs are standardised per feature with statistics fitted on the modality's train split, held in
  buffers of the model so that every later encode (evaluation, add-a-modality, serving) applies
  the same transform. Feature scales differ by orders of magnitude across modalities; the paper's raw
  setting is kept with ``normalize=False`` (the buffers are then identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SDMLAutoencoder(nn.Module):
    """Encoder fᵢ into the common space and decoder back to the input (SDML Eq. 1's x̂ and h)."""

    def __init__(self, input_dim: int, dim: int = 512, hidden: int = 1024):
        super().__init__()
        self.input_dim, self.dim, self.hidden = input_dim, dim, hidden
        self.encoder = _mlp([input_dim, hidden, hidden, dim])
        self.decoder = _mlp([dim, hidden, hidden, input_dim])
        self.register_buffer("feature_mean", torch.zeros(input_dim))
        self.register_buffer("feature_std", torch.ones(input_dim))

    @torch.no_grad()
    def fit_normalizer(self, train_features: torch.Tensor, eps: float = 1e-6) -> None:
        """Per-feature mean/std from the train split (std floored so constant features stay 0)."""
        x = train_features.double()
        self.set_normalizer(x.mean(0), x.var(0, unbiased=False), eps)

    @torch.no_grad()
    def set_normalizer(self, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-6) -> None:
        """Per-feature mean and population variance (float64, e.g. a streamed pass over the train
        split) as the standardisation; std floored as in :meth:`fit_normalizer`."""
        std = var.double().clamp_min(0).sqrt()
        self.feature_mean.copy_(mean.to(self.feature_mean.dtype))
        self.feature_std.copy_(torch.where(std > eps, std, torch.ones_like(std)).float())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feature_mean) / self.feature_std

    def encode_normalized(self, x_norm: torch.Tensor) -> torch.Tensor:
        """h = fᵢ(x) on an already standardised input, L2-normalised: (B, d)."""
        return F.normalize(self.encoder(x_norm), dim=1)

    def forward(self, x_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, x̂) for a standardised batch: (B, d), (B, dim)."""
        h = self.encode_normalized(x_norm)
        return h, self.decoder(h)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Common representation of raw features, in batches: (N, d)."""
        out = [self.encode_normalized(self.normalize(x[i : i + batch_size]))
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else x.new_zeros((0, self.dim))

    def config(self) -> dict[str, int]:
        return {"input_dim": self.input_dim, "dim": self.dim, "hidden": self.hidden}

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
