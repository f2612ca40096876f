"""MMCA: Multi-Modality Cross Attention network for image-sentence matching (MMCA).

Wei et al., CVPR 2020. Two modules score an (image, sentence) pair:

- self-attention module (§3.3): a transformer over the image regions, averaged into ``i0``
  (Eq. 5); a transformer over the words, whose outputs pass 1/2/3-gram 1d convolutions, a max pool,
  a fully connected layer and LayerNorm into ``c0`` (Eq. 6-7);
- cross-attention module (§3.4): one transformer over the stacked fragments of ONE image and ONE
  sentence, ``Y = (R; E)`` (Eq. 8-14), split back into regions (averaged into ``i1``) and words
  (n-gram CNN + max pool into ``c1``).

The score is ``S(I, T) = i0·c0 + α·(i1·c1)`` with α = 0.2 (§3.5; the paper writes this formula in
the text of §3.5 without an equation number, and tunes α in Table 6). All four embeddings are
ℓ2-normalised ("since the embeddings are scaled to have a unit norm", §3.5). The ranking loss (Eq.
15, hardest negatives as in VSE++) lives in ``functional/contrastive.py`` and the trainer.

Cost of the cross attention. ``i1``/``c1`` depend on the pair, so scoring ``B_img`` images against
``B_txt`` texts runs the cross transformer on ``B_img·B_txt`` sequences of length ``k + n``
(regions + words): O(B_img·B_txt·n_layers·((k+n)²·d + (k+n)·d·ffn)) time and
O(B_img·B_txt·(k+n)·d) activation memory. We do it batched (the fragments are broadcast and
stacked, no Python loop over pairs), in blocks of at most ``pair_chunk`` pairs. A batch of 128
against 128 with 36 regions and 20 words is 16 384 sequences of length 56; a 5K-image COCO test
gallery (5000 x 25 000 pairs) is 1.25·10⁸ sequences, so full-gallery evaluation is costly, as in
the paper, which evaluates the same way. The ``i0·c0`` part is a plain matrix product.

Deviations from the paper, and why:
- Text encoder: the paper feeds WordPiece tokens to a pre-trained, frozen BERT-base (§3.3, §4.2).
  No pre-trained BERT is reachable offline here, so we train a small transformer encoder from
  scratch over our own vocabulary (token + position embeddings, LayerNorm, ``text_layers`` post-LN
  layers). There is no segment embedding (one sentence per input).
- Eq. 7 writes LayerNorm where the text says "ℓ2 normalization"; we apply both (LayerNorm, then ℓ2),
  so that S is a sum of cosines as §3.5 states.
- The cross-attention module's n-gram CNN has its own weights (the paper says it is "quite similar
  to" the self-attention module's; it does not say the weights are shared).
- Captions longer than ``max_len`` tokens are truncated (position embeddings are learned).
- Dense caption vectors (a float ``(B, D)`` text input, e.g. the mfeat-pairs data) are projected to
  ONE text fragment of width d and go through the same text transformer, CNN and cross attention.
  This needs ``text_dim=D`` at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from scalable_xmr.config import TrainSchedule
from scalable_xmr.errors import InputError
from scalable_xmr.models.base import BranchModel, check_margin_hinge, check_positive_int
from scalable_xmr.models.conv import conv1d_channels_last

__all__ = ["MMCA", "MMCAConfig", "NGramPool", "as_regions", "check_tokens", "concat_text_reprs"]


@dataclass(frozen=True)
class MMCAConfig:
    """Hyperparameters of :class:`MMCA`; defaults follow MMCA §4.2 unless noted."""

    # MMCA §4.2: "trained for 20 epochs with the Adam optimizer ... a learning rate 0.0002 for the
    # first 10 epochs, and then decay the learning rate by 0.1 for the rest epochs. The
    # batch-size is set to 64".
    schedule: ClassVar[TrainSchedule] = TrainSchedule(
        epochs=20, batch_size=64, lr=2e-4, lr_decay_epochs=10, lr_decay=0.1, source="MMCA §4.2")
    embed_dim: int = 256  # d; Tables 4-5: 256 is best on Flickr30K and COCO
    n_heads: int = 16  # §4.2: 16 heads in the image and the cross-attention transformers
    n_layers: int = 1  # transformer layers of the image self-attention and the cross attention
    text_layers: int = 2  # our text transformer (the paper's frozen BERT-base has 12; see above)
    n_filters: int = 256  # §4.2: 256 filters for each n-gram size
    ffn_dim: int | None = None  # Eq. 4: W1, W2 are d x d, so None means embed_dim
    dropout: float = 0.1  # not given in the paper; the usual transformer value
    max_len: int = 64  # text positions; longer captions are truncated
    alpha: float = 0.2  # §3.5, Table 6: weight of the cross-attention score
    margin: float = 0.2  # Eq. 15 / §4.2: hinge margin (used by the trainer's loss)
    hinge: str = "max"  # Eq. 15: hardest negatives in the batch (VSE++); "sum" = all negatives
    pair_chunk: int = 4096  # (image, text) pairs per cross-attention call (>= one image row)

    def __post_init__(self) -> None:
        for name in ("embed_dim", "n_heads", "n_layers", "text_layers", "n_filters", "max_len",
                     "pair_chunk"):
            check_positive_int(name, getattr(self, name))
        if self.ffn_dim is not None:
            check_positive_int("ffn_dim", self.ffn_dim)
        if self.embed_dim % self.n_heads:
            raise InputError(
                f"MMCAConfig: embed_dim ({self.embed_dim}) must be divisible by n_heads "
                f"({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"MMCAConfig.dropout: must be in [0, 1), got {self.dropout!r}")
        if not self.alpha >= 0.0:
            raise InputError(f"MMCAConfig.alpha: must be >= 0, got {self.alpha!r}")
        check_margin_hinge(self)


def as_regions(images: torch.Tensor, image_dim: int) -> torch.Tensor:
    """Validate ``images`` ``(B, dim)`` or ``(B, R, dim)`` and return ``(B, R, dim)`` (R = 1)."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images: expected a float tensor, got {kind}")
    if images.dim() not in (2, 3) or images.shape[-1] != image_dim or images.shape[0] == 0:
        raise InputError(
            f"images: expected shape (B, {image_dim}) or (B, n_regions, {image_dim}), "
            f"got {tuple(images.shape)}"
        )
    return images.unsqueeze(1) if images.dim() == 2 else images


def check_tokens(
    tokens: torch.Tensor, lengths: torch.Tensor, vocab_size: int, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate padded token ids and lengths; truncate to ``max_len``; return ``(tokens, valid)``.

    ``valid`` is ``(B, T)`` bool, True at the first ``lengths[b]`` positions of row b.
    """
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32) or not len(tokens):
        raise InputError(
            f"tokens: expected a (B, T) integer tensor, got {tokens.dtype} {tuple(tokens.shape)}"
        )
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (tokens.shape[0],):
        shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths)
        raise InputError(f"lengths: expected shape ({tokens.shape[0]},), got {shape}")
    lengths = lengths.to(tokens.device)
    bad = (lengths < 1) | (lengths > tokens.shape[1])
    if bool(bad.any()):
        raise InputError(
            f"lengths: every caption needs 1 <= length <= T={tokens.shape[1]}, got "
            f"{int(lengths[bad][0])}"
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise InputError(
            f"tokens: ids must lie in [0, {vocab_size}) (vocab_size), got range "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )
    tokens = tokens[:, :max_len].long()  # (B, T') truncated captions (see module docstring)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return tokens, positions[None, :] < lengths[:, None]  # (B, T'), (B, T')


def concat_text_reprs(reprs: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Concatenate MMCA text representations of several chunks, padding E and valid to one T.

    Chunks encoded separately have different T (their longest caption); padded positions are
    masked everywhere, so padding does not change any score.
    """
    width = max(r[1].shape[1] for r in reprs)
    words = [F.pad(r[1], (0, 0, 0, width - r[1].shape[1])) for r in reprs]  # (B_i, width, d)
    valid = [F.pad(r[2], (0, width - r[2].shape[1]), value=False) for r in reprs]  # (B_i, width)
    return torch.cat([r[0] for r in reprs]), torch.cat(words), torch.cat(valid)


class NGramPool(nn.Module):
    """MMCA Eq. 6-7: 1/2/3-gram 1d convolutions, max pool over words, FC, LayerNorm, ℓ2.

    ``p_{l,k} = ReLU(W_l e_{k:k+l-1} + b_l)`` for every real word k (windows reaching past the
    sentence end see zeros), ``q_l = max_k p_{l,k}``, ``c = LayerNorm(W_e [q1; q2; q3] + b_e)``.
    Padding never changes the result, so a caption scores the same alone or in a padded batch.
    """

    windows = (1, 2, 3)

    def __init__(self, dim: int, n_filters: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, n_filters, kernel_size=w) for w in self.windows)
        self.fc = nn.Linear(len(self.windows) * n_filters, dim)  # W_e, b_e of Eq. 7
        self.norm = nn.LayerNorm(dim)

    def forward(self, frags: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``frags (N, T, d)``, ``valid (N, T)`` bool -> ``(N, d)`` unit vectors."""
        x = frags * valid.unsqueeze(-1)  # (N, T, d), padding zeroed
        pooled = []
        for conv, width in zip(self.convs, self.windows, strict=True):
            # channels-last, one GEMM per window size (models/conv.py): the Conv1d's own sums
            p = F.relu(conv1d_channels_last(F.pad(x, (0, 0, 0, width - 1)), conv))  # (N, T, F): Eq. 6
            p = p.masked_fill(~valid.unsqueeze(-1), float("-inf"))  # only windows at real words
            pooled.append(p.amax(dim=1))  # (N, F): q_l
        c = self.norm(self.fc(torch.cat(pooled, dim=-1)))  # (N, d): Eq. 7
        return F.normalize(c, dim=-1)


def _transformer(cfg: MMCAConfig, n_layers: int) -> nn.TransformerEncoder:
    """Post-LN transformer units (MMCA Fig. 3: residual, then LayerNorm; FFN Eq. 4)."""
    layer = nn.TransformerEncoderLayer(
        cfg.embed_dim, cfg.n_heads, dim_feedforward=cfg.ffn_dim or cfg.embed_dim,
        dropout=cfg.dropout, batch_first=True, norm_first=False,
    )
    # No nested tensors: keeps padded positions in the output so shapes stay (N, T, d).
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


class MMCA(BranchModel):
    """Multi-Modality Cross Attention branch model (MMCA).

    Representations (plain tuples, batch first, so they can be sliced and concatenated):
    ``encode_images -> (i0 (B, d), regions R (B, k, d))`` and
    ``encode_texts -> (c0 (B, d), words E (B, T, d), valid (B, T) bool)``.
    """

    name = "mmca"

    def __init__(
        self, config: MMCAConfig, vocab_size: int, image_dim: int, *, text_dim: int | None = None
    ) -> None:
        super().__init__()
        self.set_input_dims(vocab_size, image_dim, text_dim)
        self.config = config
        d = config.embed_dim
        self.region_fc = nn.Linear(image_dim, d)  # §3.2: FC from region features to R
        self.image_attn = _transformer(config, config.n_layers)  # §3.3: R -> R_s
        self.token_emb = nn.Embedding(vocab_size, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.dense_text = nn.Linear(text_dim, d) if text_dim is not None else None
        self.text_emb_norm = nn.LayerNorm(d)
        self.text_drop = nn.Dropout(config.dropout)
        self.text_attn = _transformer(config, config.text_layers)  # stands in for BERT: -> E
        self.text_pool0 = NGramPool(d, config.n_filters)  # Eq. 6-7: c0
        self.cross_attn = _transformer(config, config.n_layers)  # §3.4: Y -> Y_c
        self.text_pool1 = NGramPool(d, config.n_filters)  # §3.4: c1

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, dim)`` or ``(B, k, dim)`` -> ``(i0 (B, d), R (B, k, d))``."""
        regions = self.region_fc(as_regions(images, self.image_dim))  # (B, k, d): R
        r_s = self.image_attn(regions)  # (B, k, d): R_s
        i0 = F.normalize(r_s.mean(dim=1), dim=-1)  # (B, d): Eq. 5, then ℓ2
        return i0, regions

    def encode_texts(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids ``(B, T)`` + lengths, or dense ``(B, text_dim)`` floats (lengths ignored).

        Returns ``(c0 (B, d), E (B, T, d), valid (B, T))``; T = 1 for dense captions.
        """
        if isinstance(tokens, torch.Tensor) and tokens.is_floating_point():
            x = self._dense_fragment(tokens)  # (B, 1, d)
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, 1)
        else:
            tokens, valid = check_tokens(tokens, lengths, self.vocab_size, self.config.max_len)
            positions = torch.arange(tokens.shape[1], device=tokens.device)  # (T,)
            x = self.token_emb(tokens) + self.pos_emb(positions)[None]  # (B, T, d)
        x = self.text_drop(self.text_emb_norm(x))
        words = self.text_attn(x, src_key_padding_mask=~valid)  # (B, T, d): E
        return self.text_pool0(words, valid), words, valid

    def _dense_fragment(self, captions: torch.Tensor) -> torch.Tensor:
        self.check_dense_captions(captions)
        return self.dense_text(captions).unsqueeze(1)  # (B, 1, d): one text fragment

    def cross_embeddings(
        self, img_repr: tuple[torch.Tensor, ...], txt_repr: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention embeddings of every (image, text) pair: ``i1, c1 (B_img, B_txt, d)``.

        MMCA §3.4: for each pair the k regions of the image and the n words of the text are stacked
        into ``Y = (R; E)`` (Eq. 8-10) and pass one transformer (Eq. 11-14), so regions attend to
        words and words to regions. All pairs run as one batch of ``B_img·B_txt`` sequences
        (padded words masked as keys). :meth:`similarity` calls this on blocks of images.
        """
        regions, (_, words, valid) = img_repr[1], txt_repr
        n_real = int(valid.sum(dim=1).max())  # drop columns that are padding in every text
        words, valid = words[:, :n_real], valid[:, :n_real]  # (B_txt, n, d), (B_txt, n)
        n_img, k, d = regions.shape
        n_txt, n = words.shape[:2]
        stacked = torch.cat(
            [regions.unsqueeze(1).expand(n_img, n_txt, k, d),
             words.unsqueeze(0).expand(n_img, n_txt, n, d)],
            dim=2,
        ).reshape(n_img * n_txt, k + n, d)  # (P, k+n, d): Y for every pair P = (image, text)
        pair_valid = torch.cat([valid.new_ones(n_txt, k), valid], dim=1)  # (B_txt, k+n)
        pair_valid = pair_valid.unsqueeze(0).expand(n_img, n_txt, k + n).reshape(-1, k + n)
        fused = self.cross_attn(stacked, src_key_padding_mask=~pair_valid)  # (P, k+n, d): Y_c
        i1 = F.normalize(fused[:, :k].mean(dim=1), dim=-1)  # (P, d): average pool of R_c
        c1 = self.text_pool1(fused[:, k:], pair_valid[:, k:])  # (P, d): CNN + max pool of E_c
        return i1.view(n_img, n_txt, d), c1.view(n_img, n_txt, d)

    def similarity(
        self, img_repr: tuple[torch.Tensor, ...], txt_repr: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """``S(I, T) = i0·c0 + α·(i1·c1)`` for every image x text: ``(B_img, B_txt)`` (§3.5).

        Also the ranking score: a sum of cosines in [-1-α, 1+α] with no squashing function after
        it, so it keeps float32 resolution (no MTFN-style sigmoid ties; audit in models/base.py).
        """
        i0, c0 = img_repr[0], txt_repr[0]
        scores = i0 @ c0.T  # (B_img, B_txt): self-attention part
        if self.config.alpha == 0.0:
            return scores  # the cross attention would be multiplied by 0: skip its cost
        rows = max(1, self.config.pair_chunk // max(1, c0.shape[0]))  # images per block
        cross = []
        for start in range(0, i0.shape[0], rows):  # blocks of images, never single pairs
            block = tuple(t[start:start + rows] for t in img_repr)
            i1, c1 = self.cross_embeddings(block, txt_repr)  # (b, B_txt, d) each
            cross.append((i1 * c1).sum(dim=-1))  # (b, B_txt)
        return scores + self.config.alpha * torch.cat(cross, dim=0)
