"""MTFN: Multi-modal Tensor Fusion Network (Wang et al., MTFN-RR, ACM MM 2019; MTFN-RR §3.1).

Image-Text fusion branch:
- ṽ = W_v v, t̃ = W_t t (§3.1), each with dropout 0.25 on the input and tanh after the map (the
  reference code's ``dropout_v/t`` and ``activation_v/t``); d_v = d_t = d_f = 1024 (§4.1).
- Eq. 3: f = Σ_{r=1..R} (W_ṽ^r ṽ) ⊙ (W_t^r t̃), R = 20; Eq. 4: S_IT = sigmoid(W_m f).
- Eq. 5: bidirectional hinge with the hardest in-batch negatives, margin α = 0.2.

Training scores vs ranking scores. The losses (Eq. 5, Eq. 7) are hinges (margin α) on the
sigmoid scores S = sigmoid(W_m f + b_m), so :meth:`MTFN.similarity` / :meth:`MTFN.text_similarity`
return those. Everything that only ranks -- R@K, re-ranking, the K' text neighbours, model
selection, the stored similarity matrices -- uses the pre-sigmoid logit W_m f instead
(:meth:`MTFN.ranking_scores`, :meth:`MTFN.text_ranking_scores`), without the bias b_m, a constant
shared by every pair. sigmoid(x + b_m) is strictly increasing in x, so the order is the same, but
float32 sigmoids saturate into ties: a lightly trained model's scores all crowd into a band
~1e-2 wide around 0.5 (float32 spacing 6e-8 there), a confident one's near 0 or 1; many pairs then
share one value and rankings are decided by index tie-breaks that flip with BLAS summation order.
Leaving b_m out matters when the pair-dependent part is small next to it (a float32 sum keeps
~7 significant digits of the larger term). docs/models.md.

Text-Text fusion branch (Eq. 6): S_TT(T, T') = sigmoid(W_m' Σ_r (W_t^r t̃) ⊙ (W_t'^r t̃')),
trained after the image-text branch with the triplet loss of Eq. 7, its parameters initialised
from the trained image-text branch (§4.1: "we use the parameters of the Image-Text fusion branch to
initialize the Text-Text fusion branch"). The paper does not say which image-text weights go
where: we copy the text encoder and W_t into the S_TT text encoder (shared by T and T'), W_t^r
into both W_t^r and W_t'^r, and W_m into W_m' — so S_TT starts as a symmetric bilinear form in the
image-text branch's text space. S_TT is used only to re-rank T2I (K' text neighbours, Eq. 14-15).

All pairs at once, without a loop over pairs: since no non-linearity sits between f and W_m,
W_m f(i, j) = Σ_{r,k} (w_k a_irk) b_jrk with a = W_ṽ ṽ_i, b = W_t t̃_j, i.e. one matrix product
of (B_img, R·d_f) by (R·d_f, B_txt) — the (B_img, B_txt, d_f) fusion tensor is never built.

Deviations, and why:
- Text features: the paper uses 2400-d skip-thought vectors from a GRU initialised with the
  pretrained Skip-thoughts model; no pretrained weights are reachable offline, so a GRU over
  trainable word embeddings (``text_hidden`` wide, default 1024) is trained from scratch. With
  dense text features (no tokens) t is the feature vector itself, as in the paper's setting.
- Region features are averaged to one global vector (the reference code's ``torch.mean(v, 1)``).
- W_ṽ^r, W_t^r and W_m have biases (the reference code's ``nn.Linear``); the R maps of each side
  are stored stacked as one Linear(d, R·d_f).
- Retrieval, re-ranking and model selection rank by W_m f, not by S_IT as the paper and its
  reference code do: the same order in exact arithmetic, without float32 sigmoid ties (above).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from scalable_xmr.config import TrainSchedule
from scalable_xmr.errors import InputError
from scalable_xmr.models.base import BranchModel, check_margin_hinge, check_positive_ints
from scalable_xmr.models.vse import (
    DenseTextEncoder,
    GRUTextEncoder,
    pool_regions,
)

__all__ = ["MTFN", "MTFNConfig", "fused_logits", "fused_scores"]


@dataclass(frozen=True)
class MTFNConfig:
    """Hyper-parameters of MTFN (defaults from MTFN-RR §4.1 and its reference code)."""

    # MTFN-RR §4.1: "Adam optimizer with a mini-batch size of 128 for 50 epochs. The initial
    # learning rate is 0.0001, decayed by 2 every 10 epochs." The paper gives no epoch count for
    # the text-text branch trained after it (``text_epochs``: the jobs' default, half of epochs).
    schedule: ClassVar[TrainSchedule] = TrainSchedule(
        epochs=50, batch_size=128, lr=1e-4, lr_decay_epochs=10, lr_decay=0.5, source="MTFN-RR §4.1")
    rank: int = 20  # R, the number of rank-1 fusion terms (Eq. 3)
    dim: int = 1024  # d_v = d_t = d_f
    dropout: float = 0.25  # on v and t before W_v / W_t (reference code)
    margin: float = 0.2  # α in Eq. 5 and Eq. 7
    hinge: str = "max"  # hardest negatives (Eq. 5); "sum" over all negatives
    word_dim: int = 300  # word embedding width of the GRU text encoder
    text_hidden: int = 1024  # GRU width (paper: 2400-d skip-thoughts; see module docstring)

    def __post_init__(self) -> None:
        check_positive_ints(self, "rank", "dim", "word_dim", "text_hidden")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise InputError(f"MTFNConfig.dropout: must be in [0, 1), got {self.dropout!r}")
        check_margin_hinge(self)


def fused_logits(
    left: torch.Tensor, right: torch.Tensor, w_left: nn.Linear, w_right: nn.Linear, w_m: nn.Linear, rank: int
) -> torch.Tensor:
    """W_m Σ_r (W_l^r x_i) ⊙ (W_r^r y_j) for all pairs (i, j), ``(B_l, B_r)``: MTFN Eq. 3-4 / Eq. 6
    before the bias b_m of W_m and the sigmoid. The ranking score (see the module docstring)."""
    n_left, n_right, d_f = left.shape[0], right.shape[0], w_m.in_features
    a = w_left(left).view(n_left, rank, d_f)  # (B_l, R, d_f): W_l^r x_i for every r
    b = w_right(right).view(n_right, rank, d_f)  # (B_r, R, d_f)
    a = a * w_m.weight.view(1, 1, d_f)  # fold W_m into the left factor
    return a.reshape(n_left, rank * d_f) @ b.reshape(n_right, rank * d_f).T  # (B_l, B_r)


def fused_scores(
    left: torch.Tensor, right: torch.Tensor, w_left: nn.Linear, w_right: nn.Linear, w_m: nn.Linear, rank: int
) -> torch.Tensor:
    """sigmoid(W_m f + b_m) in (0, 1): S_IT of Eq. 4 / S_TT of Eq. 6, the scores the hinge losses
    of Eq. 5 / Eq. 7 are defined on (their margin α = 0.2 is in these units)."""
    return torch.sigmoid(fused_logits(left, right, w_left, w_right, w_m, rank) + w_m.bias)


class _TextProjection(nn.Module):
    """t̃ = tanh(W_t dropout(t)), t from the GRU over tokens or the dense feature vector."""

    def __init__(self, cfg: MTFNConfig, vocab_size: int, text_dim: int | None) -> None:
        super().__init__()
        if text_dim is None:
            self.encoder: nn.Module = GRUTextEncoder(vocab_size, cfg.word_dim, cfg.text_hidden)
            in_dim = cfg.text_hidden
        else:
            self.encoder = _Identity(text_dim)
            in_dim = text_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(in_dim, cfg.dim)  # W_t

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = self.encoder(tokens, lengths)  # (B, text_hidden) or (B, text_dim)
        return torch.tanh(self.proj(self.dropout(t)))  # (B, dim)


class _Identity(DenseTextEncoder):
    """Dense text features passed through unchanged (with the input checks)."""

    def __init__(self, text_dim: int) -> None:
        super().__init__(text_dim, 0, text_dim)
        self.net = nn.Identity()


class MTFN(BranchModel):
    """Image-text and text-text tensor fusion (see the module docstring)."""

    name = "mtfn"
    has_text_branch = True

    def __init__(
        self, config: MTFNConfig, vocab_size: int, image_dim: int, text_dim: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, MTFNConfig):
            raise InputError(f"config: expected MTFNConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.text_dim = text_dim  # None: token captions through the GRU
        rd = cfg.rank * cfg.dim
        # Image-Text fusion branch (Eq. 2-4).
        self.img_dropout = nn.Dropout(cfg.dropout)
        self.img_proj = nn.Linear(image_dim, cfg.dim)  # W_v
        self.txt_proj = _TextProjection(cfg, vocab_size, text_dim)  # W_t (and the GRU)
        self.fuse_img = nn.Linear(cfg.dim, rd)  # W_ṽ^r, r = 1..R, stacked
        self.fuse_txt = nn.Linear(cfg.dim, rd)  # W_t^r
        self.score = nn.Linear(cfg.dim, 1)  # W_m
        # Text-Text fusion branch (Eq. 6); overwritten by init_text_branch() before training.
        self.tt_txt_proj = _TextProjection(cfg, vocab_size, text_dim)
        self.tt_fuse_a = nn.Linear(cfg.dim, rd)  # W_t^r of Eq. 6
        self.tt_fuse_b = nn.Linear(cfg.dim, rd)  # W_t'^r
        self.tt_score = nn.Linear(cfg.dim, 1)  # W_m'

    # -- image-text branch (the BranchModel interface) --------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        v = pool_regions(images)  # (B, image_dim)
        return torch.tanh(self.img_proj(self.img_dropout(v)))  # ṽ (B, dim)

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.txt_proj(tokens, lengths)  # t̃ (B, dim)

    def similarity(self, img_repr: torch.Tensor, txt_repr: torch.Tensor) -> torch.Tensor:
        """S_IT for every (image, text) pair, (B_img, B_txt) in (0, 1) (Eq. 3-4). Kept as a
        sigmoid because the loss of Eq. 5 (margin α = 0.2) is defined on it; never ranked by."""
        return fused_scores(img_repr, txt_repr, self.fuse_img, self.fuse_txt, self.score, self.config.rank)

    def ranking_scores(self, img_repr: torch.Tensor, txt_repr: torch.Tensor) -> torch.Tensor:
        """W_m f of S_IT = sigmoid(W_m f + b_m), (B_img, B_txt): the same order as
        :meth:`similarity` without its float32 ties (module docstring)."""
        return fused_logits(img_repr, txt_repr, self.fuse_img, self.fuse_txt, self.score, self.config.rank)

    # -- text-text branch -------------------------------------------------------------------
    def encode_texts_tt(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Text representation of the S_TT branch, (B, dim)."""
        return self.tt_txt_proj(tokens, lengths)

    def text_similarity(self, txt_a: torch.Tensor, txt_b: torch.Tensor) -> torch.Tensor:
        """S_TT(T_i, T'_j) for every pair of ``encode_texts_tt`` outputs, (B_a, B_b) in (0, 1)
        (Eq. 6). Kept as a sigmoid for the loss of Eq. 7; never ranked by."""
        return fused_scores(txt_a, txt_b, self.tt_fuse_a, self.tt_fuse_b, self.tt_score, self.config.rank)

    def text_ranking_scores(self, txt_a: torch.Tensor, txt_b: torch.Tensor) -> torch.Tensor:
        """W_m' f of S_TT, (B_a, B_b): the K' text neighbours of T2I re-ranking (Eq. 14-15) and
        the ``tt_r1`` model selection rank by these (module docstring)."""
        return fused_logits(txt_a, txt_b, self.tt_fuse_a, self.tt_fuse_b, self.tt_score, self.config.rank)

    def init_text_branch(self) -> None:
        """Initialise S_TT from the trained image-text branch (§4.1; mapping in the docstring)."""
        self.tt_txt_proj.load_state_dict(copy.deepcopy(self.txt_proj.state_dict()))
        self.tt_fuse_a.load_state_dict(copy.deepcopy(self.fuse_txt.state_dict()))
        self.tt_fuse_b.load_state_dict(copy.deepcopy(self.fuse_txt.state_dict()))
        self.tt_score.load_state_dict(copy.deepcopy(self.score.state_dict()))

    def text_branch_parameters(self) -> list[nn.Parameter]:
        """The parameters trained in the text-text stage (Eq. 7); the rest stay fixed."""
        mods = (self.tt_txt_proj, self.tt_fuse_a, self.tt_fuse_b, self.tt_score)
        return [p for m in mods for p in m.parameters()]

    def image_text_parameters(self) -> list[nn.Parameter]:
        """The parameters trained in the image-text stage (Eq. 5)."""
        tt = {id(p) for p in self.text_branch_parameters()}
        return [p for p in self.parameters() if id(p) not in tt]
