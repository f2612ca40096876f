"""VSA-AE-MMD: visual and textual autoencoders aligned by MMD (VSA-AE-MMD).

Carraggi et al., "Visual-Semantic Alignment Across Domains Using a Semi-Supervised Approach",
ECCV-W 2018. The codes of two autoencoders are the joint embedding:

- textual AE (§3.1): word embeddings (rows ℓ2-normalised) of a caption padded to a fixed length
  T⁽⁰⁾, N strided convolutions (Eq. 1), the last one with filter size T⁽ᴺ⁻¹⁾ giving the code h_c;
  a mirrored deconvolutional decoder whose outputs are matched to the word embeddings by a softmax
  over cosine similarities with temperature τ (Eq. 2), loss = negative log-likelihood (Eq. 3);
- visual AE (§3.2): h_i = tanh(W_e Φ(i) + b_e) (Eq. 4), î = W_d h_i + b_d (Eq. 5), loss ‖î − Φ(i)‖²
  (Eq. 6);
- similarity: cosine of h_i and h_c (Eq. 7), trained with the hinge summed over ALL negatives of
  the batch (Eq. 8; ``functional.contrastive.hinge_sum``, called by the trainer);
- alignment (§3.4, Eq. 9-10): Gaussian-kernel MMD (σ = 1) between the distribution p of VISUAL
  embeddings and the distribution q of TEXTUAL embeddings, each "coming from both the source and
  target domain": one MMD between {h_i of source ∪ target images} and {h_c of source ∪ target
  captions}. (It is not an MMD between source and target embeddings; images are pulled towards
  texts, and the target samples join both sides.)
- total (Eq. 11-12): L = L_AE(source) + L_AE(target) + L_MMD + L_SH; the hinge only on the source.

:meth:`VSA.extra_loss` returns ``recon_weight · L_AE + mmd_weight · L_MMD`` (both weights 1 in the
paper); the trainer adds L_SH (``branch/trainer.py``: ``hinge_sum`` / ``hinge_max_violation`` with
their default ``reduction="sum"``).

Reduction of each term over a mini-batch, as the paper defines them: Eq. 11 SUMS J(i, c) =
L_AE^i(i) + L_AE^c(c) over the pairs (we sum over the batch, source and target batches alike);
Eq. 8 is the hinge of ONE pair (i, c) ("the sums of Eq. 8 are taken only inside the single
mini-batch" sums over its negatives), and Eq. 12 adds it to the summed L_AE, so L_SH is summed over
the batch's pairs too (the trainer's default). Both per-sample terms thus keep the same weight
relative to each other whatever the batch size. L_MMD (Eq. 9) is one squared distance between
the two embedding distributions, not a sum over samples: it enters once per batch, estimated on
that batch's samples, so its share shrinks as the batch grows (the paper trains with batches of
32, §4.2). (Averaging the AE terms while summing the hinge weighs the autoencoders ~1/B of Eq. 12.)

Deviations, and why:
- Eq. 11-12 sum over the whole dataset and add one L_MMD; we minimise them per mini-batch (above).
- Eq. 6 is ‖î − Φ(i)‖² (summed over feature dimensions) although the text calls it "mean square
  error"; we follow the equation.
- Padded positions: the encoder sees zero vectors there; Eq. 3 is summed over the real words only
  and the padding id 0 is not a candidate word of the softmax (a zero vector has no cosine).
- Captions longer than ``max_len`` are truncated (the convolutional encoder needs a fixed T⁽⁰⁾).
- The paper gives N = 3, z = 4, r = {2, 2, 1}, word dim 300 and code size 500, not the channel
  counts nor the activations: we use ReLU between layers, tanh on h_c (like h_i, so both codes
  live in [-1, 1]), channels (300, 600) after [30] (Zhang et al. 2017), and τ = 0.01 as [30].
- MMD (and the similarity) use the ℓ2-normalised codes: Eq. 7 says the codes "are ℓ2-normed to
  have the embedding space lying on the ℓ2 ball", and §3.4 aligns in that embedding space.
- Region inputs ``(B, R, dim)`` are mean-pooled into one vector Φ(i) (the paper uses one CNN
  vector per image).
- Dense caption vectors ``(B, D)`` (e.g. mfeat-pairs) use a one-layer tanh autoencoder like the
  visual one (Eq. 4-6 applied to text) instead of the convolutional one; needs ``text_dim=D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from scalable_xmr.config import TrainSchedule
from scalable_xmr.errors import InputError
from scalable_xmr.functional.contrastive import mmd_gaussian
from scalable_xmr.models.base import BranchModel, check_margin_hinge, check_positive_int
from scalable_xmr.models.conv import conv1d_channels_last, conv_transpose1d_channels_last
from scalable_xmr.models.mmca import as_regions, check_tokens

__all__ = ["VSA", "VSAConfig", "ConvTextAutoencoder", "conv_lengths"]

TARGET_KEYS = frozenset({"images", "tokens", "lengths"})


@dataclass(frozen=True)
class VSAConfig:
    """Hyperparameters of :class:`VSA`; defaults follow VSA-AE-MMD §4.2 unless noted."""

    # VSA-AE-MMD §4.2: "mini-batches of size 32 ... Adam optimizer with an initial learning rate
    # of 2e-4 for 20 epochs, which is then decreased by a factor of 10 for the rest of the
    # training" -- the total is not given. Our choice: 20 more epochs at 2e-5 (40 in all), the
    # equal halves of VSE++ (15 + 15) and MMCA (10 + 10); with 20 the decay would never happen.
    schedule: ClassVar[TrainSchedule] = TrainSchedule(
        epochs=40, batch_size=32, lr=2e-4, lr_decay_epochs=20, lr_decay=0.1, source="VSA-AE-MMD §4.2",
        note="the paper gives 20 epochs at 2e-4 then /10 for an unstated rest; 40 in all is our choice")
    embed_dim: int = 500  # size of both AE codes (§4.2)
    margin: float = 0.2  # α of Eq. 8 (§4.2); used by the trainer's hinge_sum
    mmd_weight: float = 1.0  # Eq. 12 adds L_MMD unweighted
    recon_weight: float = 1.0  # Eq. 12 adds L_AE unweighted
    sigma: float = 1.0  # Gaussian kernel width (Eq. 10, §4.2)
    word_dim: int = 300  # word embedding size (§4.2)
    conv_channels: tuple[int, ...] = (300, 600)  # strided conv layers' channels (ours, after [30])
    filter_size: int = 4  # z (§4.2)
    strides: tuple[int, ...] = (2, 2)  # r = {2, 2, 1}: the stride-1 last layer is implicit
    max_len: int = 32  # T⁽⁰⁾: captions padded / truncated to this many tokens
    tau: float = 0.01  # temperature of Eq. 2 (not given in the paper; [30] uses 0.01)
    hinge: str = "sum"  # Eq. 8 sums over all negatives; "max" = VSE++ hardest negative

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_channels", tuple(self.conv_channels))
        object.__setattr__(self, "strides", tuple(self.strides))
        for name in ("embed_dim", "word_dim", "filter_size", "max_len"):
            check_positive_int(f"VSAConfig.{name}", getattr(self, name))
        for name in ("conv_channels", "strides"):
            for value in getattr(self, name):
                check_positive_int(f"VSAConfig.{name}", value)
        if len(self.conv_channels) != len(self.strides):
            raise InputError(
                f"VSAConfig: conv_channels {self.conv_channels} and strides {self.strides} "
                "must have one entry per strided conv layer"
            )
        check_margin_hinge(self)
        for name in ("mmd_weight", "recon_weight"):
            if not getattr(self, name) >= 0.0:
                raise InputError(f"VSAConfig.{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("sigma", "tau"):
            if not getattr(self, name) > 0.0:
                raise InputError(f"VSAConfig.{name}: must be > 0, got {getattr(self, name)!r}")
        conv_lengths(self.max_len, self.filter_size, self.strides)  # raises if too short


def conv_lengths(max_len: int, filter_size: int, strides: tuple[int, ...]) -> list[int]:
    """Sequence lengths ``[T⁽⁰⁾, ..., T⁽ᴺ⁻¹⁾]`` through the strided convolutions (VSA-AE-MMD Eq. 1).

    ``T⁽ⁿ⁺¹⁾ = ⌊(T⁽ⁿ⁾ − z) / r⁽ⁿ⁾ + 1⌋``; the last conv then spans all of T⁽ᴺ⁻¹⁾.

    Example:
        >>> conv_lengths(32, 4, (2, 2))
        [32, 15, 6]
    """
    lengths = [max_len]
    for stride in strides:
        if lengths[-1] < filter_size:
            raise InputError(
                f"VSAConfig: max_len={max_len} is too short for filter_size={filter_size} and "
                f"strides={tuple(strides)} (a layer would see {lengths[-1]} positions)"
            )
        lengths.append((lengths[-1] - filter_size) // stride + 1)
    return lengths


class ConvTextAutoencoder(nn.Module):
    """Convolutional caption autoencoder (VSA-AE-MMD §3.1, after Zhang et al. 2017 [30])."""

    def __init__(self, vocab_size: int, cfg: VSAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word_emb = nn.Embedding(vocab_size, cfg.word_dim)  # W_e; used row-normalised
        lengths = conv_lengths(cfg.max_len, cfg.filter_size, cfg.strides)
        chans = [cfg.word_dim, *cfg.conv_channels]
        z = cfg.filter_size
        self.encoder = nn.ModuleList(
            nn.Conv1d(chans[i], chans[i + 1], z, stride=r) for i, r in enumerate(cfg.strides)
        )
        self.encoder_last = nn.Conv1d(chans[-1], cfg.embed_dim, kernel_size=lengths[-1])
        self.decoder_first = nn.ConvTranspose1d(cfg.embed_dim, chans[-1], kernel_size=lengths[-1])
        # Mirror each strided conv; output_padding restores the exact length the conv floored.
        self.decoder = nn.ModuleList(
            nn.ConvTranspose1d(
                chans[i + 1], chans[i], z, stride=r,
                output_padding=lengths[i] - ((lengths[i + 1] - 1) * r + z),
            )
            for i, r in reversed(list(enumerate(cfg.strides)))
        )

    def unit_words(self) -> torch.Tensor:
        """Word embeddings with unit ℓ2 rows ``(V, word_dim)`` (§3.1)."""
        return F.normalize(self.word_emb.weight, dim=1)

    def encode(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``tokens, valid (B, T ≤ max_len)`` -> code h_c ``(B, embed_dim)`` in [-1, 1]."""
        x = self.unit_words()[tokens] * valid.unsqueeze(-1)  # (B, T, k), zeros at padding
        x = F.pad(x, (0, 0, 0, self.cfg.max_len - x.shape[1]))  # (B, T⁽⁰⁾, k)
        # channels-last, one GEMM per layer (models/conv.py): the same sums as the Conv1d modules
        for conv in self.encoder:
            x = F.relu(conv1d_channels_last(x, conv))  # (B, T⁽ⁿ⁾, C_n): Eq. 1
        return torch.tanh(conv1d_channels_last(x, self.encoder_last)).squeeze(1)  # (B, d)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ``(B, d)`` -> reconstructed unit word vectors x̂ ``(B, max_len, word_dim)``."""
        x = conv_transpose1d_channels_last(codes.unsqueeze(1), self.decoder_first)  # (B, T⁽ᴺ⁻¹⁾, C)
        for layer in self.decoder:
            x = conv_transpose1d_channels_last(F.relu(x), layer)  # (B, T⁽ⁿ⁾, C_n)
        return F.normalize(x, dim=-1)  # (B, T⁽⁰⁾, k)

    def loss(self, tokens: torch.Tensor, valid: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Eq. 2-3: −Σ_t log softmax_v(cos(x̂ᵗ, W_e[v]) / τ)[wᵗ] over real words; batch sum."""
        recon = self.decode(codes)[:, : tokens.shape[1]]  # (B, T, k)
        logits = recon @ self.unit_words().T / self.cfg.tau  # (B, T, V): Eq. 2 (both unit norm)
        logits[..., 0] = float("-inf")  # the padding id is not a word
        targets = tokens.masked_fill(~valid, 0)  # (B, T); id 0 is ignored below
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=0, reduction="none")
        return nll.sum()  # (B, T) -> Eq. 3 per caption, summed over the batch (Eq. 11)


class DenseAutoencoder(nn.Module):
    """One tanh layer and a linear decoder: VSA-AE-MMD Eq. 4-6 (the visual AE)."""

    def __init__(self, in_dim: int, code_dim: int) -> None:
        super().__init__()
        self.enc = nn.Linear(in_dim, code_dim)  # W_e, b_e
        self.dec = nn.Linear(code_dim, in_dim)  # W_d, b_d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.enc(x))  # (B, d): Eq. 4

    def loss(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (self.dec(codes) - x).pow(2).sum()  # Eq. 5-6 per sample, summed over the batch (Eq. 11)


class VSA(BranchModel):
    """VSA-AE-MMD branch model (VSA-AE-MMD).

    ``encode_images`` / ``encode_texts`` return the raw codes h_i, h_c ``(B, embed_dim)`` (the
    decoders need them unnormalised); :meth:`similarity` takes their cosine (Eq. 7).
    """

    name = "vsa"

    def __init__(
        self, config: VSAConfig, vocab_size: int, image_dim: int, *, text_dim: int | None = None
    ) -> None:
        super().__init__()
        self.set_input_dims(vocab_size, image_dim, text_dim)
        self.config = config
        self.visual_ae = DenseAutoencoder(image_dim, config.embed_dim)
        self.text_ae = ConvTextAutoencoder(vocab_size, config)
        self.dense_text_ae = (
            DenseAutoencoder(text_dim, config.embed_dim) if text_dim is not None else None
        )

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        return as_regions(images, self.image_dim).mean(dim=1)  # (B, dim): Φ(i)

    def _dense_captions(self, captions: torch.Tensor) -> DenseAutoencoder:
        self.check_dense_captions(captions)
        return self.dense_text_ae

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, dim)`` or ``(B, R, dim)`` (regions mean-pooled) -> h_i ``(B, d)`` (Eq. 4)."""
        return self.visual_ae.encode(self._image_features(images))

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Token ids ``(B, T)`` + lengths, or dense ``(B, text_dim)`` (lengths ignored) -> h_c."""
        if isinstance(tokens, torch.Tensor) and tokens.is_floating_point():
            return self._dense_captions(tokens).encode(tokens)
        tokens, valid = check_tokens(tokens, lengths, self.vocab_size, self.config.max_len)
        return self.text_ae.encode(tokens, valid)

    def similarity(self, img_repr: torch.Tensor, txt_repr: torch.Tensor) -> torch.Tensor:
        """Cosine of every image code with every caption code ``(B_img, B_txt)`` (Eq. 7); also the
        ranking score: in [-1, 1], nothing squashes it into float32 ties (audit in models/base.py)."""
        return F.normalize(img_repr, dim=-1) @ F.normalize(txt_repr, dim=-1).T

    def image_recon_loss(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Eq. 6, summed over the batch (Eq. 11)."""
        return self.visual_ae.loss(self._image_features(images), codes)

    def text_recon_loss(
        self, tokens: torch.Tensor, lengths: torch.Tensor | None, codes: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 3 (token captions) or Eq. 6 applied to dense captions, summed over the batch."""
        if isinstance(tokens, torch.Tensor) and tokens.is_floating_point():
            return self._dense_captions(tokens).loss(tokens, codes)
        tokens, valid = check_tokens(tokens, lengths, self.vocab_size, self.config.max_len)
        return self.text_ae.loss(tokens, valid, codes)

    def extra_loss(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        img_repr: torch.Tensor,
        txt_repr: torch.Tensor,
        target: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``recon_weight · L_AE + mmd_weight · L_MMD`` (VSA-AE-MMD Eq. 11-12, without L_SH), with
        L_AE summed over the batch and L_MMD once per batch (module docstring).

        ``target`` is an optional unpaired target-domain batch: ``{"images": (B_t, ...)}`` and/or
        ``{"tokens": ..., "lengths": ...}``. Its samples add their reconstruction terms (Eq. 11)
        and join the image side / text side of the single MMD (Eq. 9).
        """
        cfg = self.config
        recon = self.image_recon_loss(images, img_repr) + self.text_recon_loss(
            tokens, lengths, txt_repr)
        img_codes, txt_codes = [img_repr], [txt_repr]
        target = dict(target or {})
        unknown = sorted(set(target) - TARGET_KEYS)
        if unknown:
            raise InputError(f"target: unknown keys {unknown}; expected some of "
                             f"{sorted(TARGET_KEYS)}")
        if "images" in target:
            codes = self.encode_images(target["images"])
            recon = recon + self.image_recon_loss(target["images"], codes)
            img_codes.append(codes)
        if "tokens" in target:
            t_tokens, t_lengths = target["tokens"], target.get("lengths")
            if t_lengths is None and not t_tokens.is_floating_point():
                raise InputError("target: 'tokens' of token ids need 'lengths' too")
            codes = self.encode_texts(t_tokens, t_lengths)
            recon = recon + self.text_recon_loss(t_tokens, t_lengths, codes)
            txt_codes.append(codes)
        elif "lengths" in target:
            raise InputError("target: 'lengths' given without 'tokens'")
        mmd = mmd_gaussian(  # Eq. 9-10: visual vs textual embeddings, source ∪ target each
            F.normalize(torch.cat(img_codes), dim=-1),
            F.normalize(torch.cat(txt_codes), dim=-1),
            sigma=cfg.sigma,
        )
        return cfg.recon_weight * recon + cfg.mmd_weight * mmd
