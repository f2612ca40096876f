"""VSE baseline: GRU sentence encoder + affine image projection, cosine score (Kiros et al. 2014, VSE++).

Kiros et al. 2014: each word is embedded and fed to a GRU; "the activations of the
GRUs at the last time step" represent the sentence in the joint space, and "an affine
transformation is applied on the image representation" to match its dimension. Following VSE++
(Faghri et al. 2018, the reference for the loss; MTFN-RR [6]) both embeddings are L2-normalised
and scored by cosine similarity s(i, c) = f(i)·g(c), trained with the max-of-hinges loss
(``functional.contrastive.hinge_max_violation``, VSE++ Eq. 5) with margin α = 0.2.

Deviations, and why:
- Region features (B, n_regions, dim) are averaged to one vector before the affine map (VSE uses a
  single CNN vector per image; the precomp data gives 36 regions).
- Dense "text" (e.g. a second mfeat view, no tokens) goes through a one-hidden-layer ReLU MLP
  (or an affine map with ``dense_text_hidden=0``) instead of the GRU; the papers only have words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from scalable_xmr.config import TrainSchedule
from scalable_xmr.errors import InputError
from scalable_xmr.models.base import BranchModel, check_margin_hinge, check_positive_ints
from scalable_xmr.models.gru import gru_last_hidden, pack_by_length

__all__ = ["VSE", "VSEConfig", "GRUTextEncoder", "DenseTextEncoder", "pool_regions"]


@dataclass(frozen=True)
class VSEConfig:
    """Hyper-parameters of the VSE baseline (defaults from VSE++)."""

    # VSE++ (Faghri et al. 2018; the VSE paper we follow, Kiros et al. 2014, gives no schedule):
    # Adam at 2e-4 for 15 epochs, then 2e-5 for 15 more, batch 128.
    schedule: ClassVar[TrainSchedule] = TrainSchedule(
        epochs=30, batch_size=128, lr=2e-4, lr_decay_epochs=15, lr_decay=0.1,
        source="VSE++, Faghri et al. 2018")
    embed_dim: int = 1024  # joint space width (VSE++ embed_size)
    word_dim: int = 300  # word embedding width (VSE++ word_dim)
    margin: float = 0.2  # hinge margin α (VSE++)
    hinge: str = "max"  # VSE++ hardest negatives; "sum" = Kiros' sum over all negatives
    dense_text_hidden: int = 1024  # MLP hidden width for dense text; 0 = affine map

    def __post_init__(self) -> None:
        check_positive_ints(self, "embed_dim", "word_dim")
        if not isinstance(self.dense_text_hidden, int) or self.dense_text_hidden < 0:
            raise InputError(
                f"VSEConfig.dense_text_hidden: must be an integer >= 0, got {self.dense_text_hidden!r}"
            )
        check_margin_hinge(self)


def pool_regions(images: torch.Tensor) -> torch.Tensor:
    """(B, dim) unchanged; (B, n_regions, dim) -> mean over regions (B, dim)."""
    if images.dim() == 3:
        return images.mean(dim=1)  # (B, dim)
    if images.dim() != 2:
        raise InputError(f"images: expected (B, dim) or (B, n_regions, dim), got {tuple(images.shape)}")
    return images


class GRUTextEncoder(nn.Module):
    """Word embedding + one-layer GRU; the last hidden state of each caption (Kiros, VSE++)."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise InputError(f"vocab_size: a token text encoder needs >= 2 tokens, got {vocab_size}")
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)  # VSE++ init_weights
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.gru = nn.GRU(word_dim, hidden, num_layers=1, batch_first=True)
        self.out_dim = hidden

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if tokens.dtype != torch.long or tokens.dim() != 2:
            raise InputError(
                f"tokens: expected a padded LongTensor (B, T), got {tokens.dtype} "
                f"{tuple(tokens.shape)} (dense text needs a model built with "
                f"text_dim)"
            )
        lengths_cpu = lengths.cpu()  # the step loop needs them on the host: one copy of B ints
        if len(lengths_cpu) != len(tokens) or bool((lengths_cpu < 1).any()) or bool(
                (lengths_cpu > tokens.shape[1]).any()):
            raise InputError(f"lengths: expected {len(tokens)} caption lengths in [1, "
                             f"{tokens.shape[1]}], got {lengths_cpu.tolist()[:8]}...")
        if tokens.is_cuda:  # cuDNN's fused GRU
            x = self.embed(tokens)  # (B, T, word_dim)
            packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
            _, h_last = self.gru(packed)  # (1, B, hidden), in the input's batch order
            return h_last[-1]  # (B, hidden)
        # CPU: the same equations as few large GEMMs (models/gru.py)
        packed_tokens, order, batch_sizes = pack_by_length(tokens, lengths_cpu)
        h_sorted = gru_last_hidden(self.embed(packed_tokens), batch_sizes, self.gru)  # (B, hidden)
        return h_sorted[torch.argsort(order)]  # (B, hidden), in the input's batch order


class DenseTextEncoder(nn.Module):
    """Dense text vectors (B, D) -> (B, out): ReLU MLP with one hidden layer, or affine."""

    def __init__(self, text_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(text_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
            )
        else:
            self.net = nn.Linear(text_dim, out_dim)
        self.text_dim, self.out_dim = text_dim, out_dim

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if not features.is_floating_point() or features.dim() != 2 or features.shape[1] != self.text_dim:
            raise InputError(
                f"text features: expected a float tensor (B, {self.text_dim}), "
                f"got {features.dtype} {tuple(features.shape)}"
            )
        return self.net(features)  # (B, out_dim)


class VSE(BranchModel):
    """Kiros/VSE++ visual-semantic embedding (see the module docstring)."""

    name = "vse"

    def __init__(
        self, config: VSEConfig, vocab_size: int, image_dim: int, text_dim: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, VSEConfig):
            raise InputError(f"config: expected VSEConfig, got {type(config).__name__}")
        self.config, self.text_dim = config, text_dim
        self.img_fc = nn.Linear(image_dim, config.embed_dim)  # the affine image projection
        r = (6.0 / (image_dim + config.embed_dim)) ** 0.5  # VSE++ EncoderImagePrecomp init
        nn.init.uniform_(self.img_fc.weight, -r, r)
        nn.init.zeros_(self.img_fc.bias)
        if text_dim is None:
            self.txt_enc: nn.Module = GRUTextEncoder(vocab_size, config.word_dim, config.embed_dim)
        else:
            self.txt_enc = DenseTextEncoder(text_dim, config.dense_text_hidden, config.embed_dim)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.img_fc(pool_regions(images)), dim=-1)  # (B, embed_dim)

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.txt_enc(tokens, lengths), dim=-1)  # (B, embed_dim)

    def similarity(self, img_repr: torch.Tensor, txt_repr: torch.Tensor) -> torch.Tensor:
        # (B_img, B_txt) cosines in [-1, 1]; also the ranking score: nothing squashes them into
        # float32 ties as MTFN's sigmoid does (audit in models/base.py)
        return img_repr @ txt_repr.T
