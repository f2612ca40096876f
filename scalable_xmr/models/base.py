"""The interface every image-text branch model implements (VSE, MTFN, MMCA, VSA).

A branch model scores image-caption pairs. Training, evaluation and re-ranking only ever call the
methods below, so one trainer (branch/trainer.py) serves every model:

- ``encode_images(images)``: images is a float tensor ``(B, dim)`` (one vector per image) or
  ``(B, n_regions, dim)`` (region features); returns whatever representation ``similarity`` needs
  (a tensor, or a tuple of tensors for models with several embeddings, e.g. MMCA's i0 and i1).
- ``encode_texts(tokens, lengths)``: tokens is a padded ``LongTensor (B, T)`` (0 = padding),
  lengths ``(B,)``; returns the text representation.
- ``similarity(img_repr, txt_repr)``: scores of every image against every text, ``(B_img, B_txt)``,
  as the model's training loss needs them. For models whose score is not a dot product (MTFN's
  tensor fusion) this computes all pairs.
- ``ranking_scores(img_repr, txt_repr)`` (default: ``similarity``): the scores that evaluation,
  re-ranking and the stored similarity matrices rank by -- any strictly increasing function of
  ``similarity`` that keeps float32 resolution. MTFN overrides it with its pre-sigmoid logit
  W_m f (a float32 sigmoid saturates into ties). The evaluator calls it on chunks of the gallery
  so memory stays bounded.
- ``extra_loss(...)`` (optional, default 0): model-specific terms beside the ranking loss (VSA's
  reconstruction and MMD terms).
- A text-text branch (only MTFN: ``has_text_branch = True``) adds ``encode_texts_tt``,
  ``text_similarity`` (for its loss) and ``text_ranking_scores`` (default: ``text_similarity``;
  used for the K' text neighbours of re-ranking).

Saturation audit (why only MTFN overrides the ranking scores): VSE and VSA score by the cosine of
two ℓ2-normalised embeddings and MMCA by i0·c0 + α·i1·c1 (a sum of cosines): dot products in
[-1, 1] (MMCA [-1-α, 1+α]) with no squashing function after them, so no part of the range is
compressed into a few float32 values; after 3 epochs on the synthetic test pairs >= 99.6 % of
their test scores were distinct in every setting we tried (tests/pairs/test_scores_distinct.py
checks >= 99 %). MTFN's S_IT / S_TT end in a sigmoid, which does compress. Ties remain possible
for a model that collapsed -- e.g. MMCA with the hardest-negative hinge at lr 5e-3 on that tiny
set ended at chance R@K with every score within ~1e-3 of 0.028 (86 % distinct): its pair-to-pair
differences are as small as the float32 rounding of the dot products (~1e-7), so no monotone
transform of the score would recover an order; that is a training failure, not a numerics one.

Models take typed config dataclasses in their constructor and never read globals.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scalable_xmr.errors import InputError

Repr = Any  # a tensor or a tuple of tensors


def check_positive_int(name: str, value: object) -> None:
    """Raise a one-line InputError unless ``value`` is an int >= 1 (bools refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name}: must be a positive integer, got {value!r}")


def check_positive_ints(obj: object, *names: str) -> None:
    """:func:`check_positive_int` on each named field of a config, named ``Config.field``."""
    for name in names:
        check_positive_int(f"{type(obj).__name__}.{name}", getattr(obj, name))


def check_margin_hinge(cfg: object) -> None:
    """InputError unless ``cfg.margin`` >= 0 and ``cfg.hinge`` is "max" or "sum"."""
    margin, hinge = cfg.margin, cfg.hinge  # type: ignore[attr-defined]
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not margin >= 0:
        raise InputError(f"{type(cfg).__name__}.margin: must be a number >= 0, got {margin!r}")
    if hinge not in ("max", "sum"):
        raise InputError(f"{type(cfg).__name__}.hinge: expected 'max' or 'sum', got {hinge!r}")


class BranchModel(nn.Module):
    """Base class of the image-text branch models."""

    name: str = "base"
    has_text_branch: bool = False  # True when the model has an S_TT branch (MTFN)

    def set_input_dims(self, vocab_size: int, image_dim: int, text_dim: int | None) -> None:
        """Check and keep the input sizes: vocabulary, image feature size, dense caption size."""
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("image_dim", image_dim)
        if text_dim is not None:
            check_positive_int("text_dim", text_dim)
        self.vocab_size, self.image_dim, self.text_dim = vocab_size, image_dim, text_dim

    def check_dense_captions(self, captions: torch.Tensor) -> None:
        """InputError unless ``captions`` is a (B >= 1, text_dim) batch this model was built for."""
        if self.text_dim is None:
            raise InputError(
                f"tokens: got a float tensor {tuple(captions.shape)} (dense caption vectors) but "
                f"this {self.name.upper()} was built for token ids (vocab_size={self.vocab_size}); build "
                "it with text_dim=<caption vector size> to use dense captions"
            )
        if captions.dim() != 2 or captions.shape[1] != self.text_dim or not len(captions):
            raise InputError(
                f"tokens: dense captions must have shape (B, {self.text_dim}), got "
                f"{tuple(captions.shape)}"
            )

    def encode_images(self, images: torch.Tensor) -> Repr:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Repr:  # pragma: no cover
        raise NotImplementedError

    def similarity(self, img_repr: Repr, txt_repr: Repr) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def ranking_scores(self, img_repr: Repr, txt_repr: Repr) -> torch.Tensor:
        """Scores to rank by, ``(B_img, B_txt)``, same order as ``similarity``; default: it."""
        return self.similarity(img_repr, txt_repr)

    def text_similarity(self, txt_a: Repr, txt_b: Repr) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError(f"model {self.name!r} has no text-text branch")

    def text_ranking_scores(self, txt_a: Repr, txt_b: Repr) -> torch.Tensor:
        """Text-text scores to rank by, same order as ``text_similarity``; default: it."""
        return self.text_similarity(txt_a, txt_b)

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
