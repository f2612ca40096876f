"""The interface every image-text branch model implements (VSE, MTFN, MMCA, VSA).

A branch model scores image-caption pairs. Training, evaluation and re-ranking only ever call the
three methods below, so one trainer (engine/pairs.py) serves every model:

- ``encode_images(images)``: images is a float tensor ``(B, dim)`` (one vector per image) or
  ``(B, n_regions, dim)`` (region features); returns whatever representation ``similarity`` needs
  (a tensor, or a tuple of tensors for models with several embeddings, e.g. MMCA's i0 and i1).
- ``encode_texts(tokens, lengths)``: tokens is a padded ``LongTensor (B, T)`` (0 = padding),
  lengths ``(B,)``; returns the text representation.
- ``similarity(img_repr, txt_repr)``: scores of every image against every text, ``(B_img, B_txt)``.
  For models whose score is not a dot product (MTFN's tensor fusion) this computes all pairs; the
  evaluator calls it on chunks of the gallery so memory stays bounded.
- ``extra_loss(...)`` (optional, default 0): model-specific terms beside the ranking loss (VSA's
  reconstruction and MMD terms).

Models take typed config dataclasses in their constructor and never read globals.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Repr = Any  # a tensor or a tuple of tensors


class BranchModel(nn.Module):
    """Base class of the image-text branch models."""

    name: str = "base"

    def encode_images(self, images: torch.Tensor) -> Repr:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Repr:  # pragma: no cover
        raise NotImplementedError

    def similarity(self, img_repr: Repr, txt_repr: Repr) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_loss(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        img_repr: Repr,
        txt_repr: Repr,
        target: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Model-specific loss terms beside the ranking loss; 0 by default."""
        return images.new_zeros(())
