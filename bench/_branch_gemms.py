"""The dense work of one training step of each branch model, as the list of its matrix products.

A step's "model FLOPs" are the FLOPs of these GEMMs: forward, and backward (the gradient of the
weight and, where the input needs one, of the input), 2·m·k·n each. Element-wise work (activations,
gates, softmax, LayerNorm, the hinge, Adam) is not counted: it is bounded by memory, not
arithmetic, and is the overhead the "% of GEMM rate" figure exposes. Shapes follow the model code
as it runs on the CPU at the batch's real sizes:

- a linear map ``rows x in -> out``: forward ``(rows, in) @ (in, out)``, weight gradient
  ``(out, rows) @ (rows, in)``, input gradient ``(rows, out) @ (out, in)`` unless the input is data
  (raw image features need no gradient; word embeddings are trained, so their inputs count);
- the GRU (models/gru.py): the input map over every real token at once, per time step t >= 2 the
  hidden map W_h h_{t-1} and its input gradient (B_t rows, the captions still running; step 1 has
  h_0 = 0), one weight gradient over all steps; padding is never computed, so never counted;
- VSA's (transposed) convolutions as their im2col GEMMs (models/conv.py);
- MMCA's attention: per sequence and head, Q Kᵀ and A V (batched GEMMs) and their two gradients
  each; every transformer runs over the batch's padded width (the cross attention over its
  longest caption), as the model does.

The reference rate runs exactly these shapes back to back with ``torch.mm`` / ``torch.bmm`` on
fresh random operands (contiguous, no transposes): the best this machine's BLAS does for the
step's own shapes, so "% of GEMM rate" is what the rest of the step costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from scalable_xmr.models.vsa import conv_lengths


@dataclass(frozen=True)
class Gemm:
    role: str
    m: int
    k: int
    n: int
    batch: int = 1  # > 1: a batched product (torch.bmm)

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.k * self.n


def linear(role: str, rows: int, n_in: int, n_out: int, grad_input: bool = True) -> list[Gemm]:
    """Forward, weight gradient and (``grad_input``) input gradient of ``rows x n_in -> n_out``."""
    gemms = [Gemm(f"{role} fwd", rows, n_in, n_out), Gemm(f"{role} dW", n_out, rows, n_in)]
    return gemms + ([Gemm(f"{role} dx", rows, n_out, n_in)] if grad_input else [])


def scores(role: str, n_a: int, dim: int, n_b: int) -> list[Gemm]:
    """``a @ bᵀ`` (n_a, n_b) and the gradients of both operands."""
    return [Gemm(f"{role} fwd", n_a, dim, n_b), Gemm(f"{role} da", n_a, n_b, dim),
            Gemm(f"{role} db", n_b, n_a, dim)]


def gru(lengths: list[int], n_in: int, hidden: int) -> list[Gemm]:
    """The batched GRU (models/gru.py) over captions of these lengths."""
    n_tok, steps = sum(lengths), max(lengths)
    sizes = [sum(1 for n in lengths if n > t) for t in range(steps)]
    gemms = linear("GRU W_i x", n_tok, n_in, 3 * hidden)
    for b in sizes[1:]:
        gemms += [Gemm("GRU W_h h fwd", b, hidden, 3 * hidden), Gemm("GRU W_h h dh", b, 3 * hidden, hidden)]
    return gemms + [Gemm("GRU dW_h", 3 * hidden, n_tok - sizes[0], hidden)]


def transformer(role: str, seqs: int, length: int, d: int, heads: int, ffn: int) -> list[Gemm]:
    """One post-LN encoder layer over ``seqs`` sequences of ``length`` tokens (MMCA Eq. 1-4)."""
    rows, hd = seqs * length, d // heads
    gemms = linear(f"{role} QKV", rows, d, 3 * d)
    for name, (m, k, n) in (("QKᵀ", (length, hd, length)), ("AV", (length, length, hd))):
        gemms += [Gemm(f"{role} {name} fwd", m, k, n, seqs * heads),
                  Gemm(f"{role} {name} dA", m, n, k, seqs * heads),
                  Gemm(f"{role} {name} dB", k, m, n, seqs * heads)]
    return (gemms + linear(f"{role} out", rows, d, d) + linear(f"{role} FFN1", rows, d, ffn)
            + linear(f"{role} FFN2", rows, ffn, d))


def ngram_pool(role: str, seqs: int, length: int, d: int, filters: int) -> list[Gemm]:
    """MMCA Eq. 6-7: 1/2/3-gram convolutions (im2col GEMMs) and the FC."""
    gemms = []
    for w in (1, 2, 3):
        gemms += linear(f"{role} {w}-gram", seqs * length, d * w, filters)
    return gemms + linear(f"{role} FC", seqs, 3 * filters, d)


def step_gemms(model: torch.nn.Module, lengths: list[int], image_shape: tuple[int, ...],
               padded_width: int) -> list[Gemm]:
    """Every GEMM of one image-text training step of ``model`` on B captions with ``lengths``
    (``padded_width``: the batch's token width), each with its image of ``image_shape`` (one
    image's: ``(dim,)`` or ``(n_regions, dim)``; VSE, MTFN and VSA average the regions first)."""
    cfg, b = model.config, len(lengths)
    image_dim, n_regions = image_shape[-1], (image_shape[0] if len(image_shape) == 2 else 1)
    name = model.name
    if name == "vse":
        return (linear("img_fc", b, image_dim, cfg.embed_dim, grad_input=False)
                + gru(lengths, cfg.word_dim, cfg.embed_dim) + scores("sim", b, cfg.embed_dim, b))
    if name == "mtfn":
        rd = cfg.rank * cfg.dim
        return (linear("W_v", b, image_dim, cfg.dim, grad_input=False)
                + gru(lengths, cfg.word_dim, cfg.text_hidden) + linear("W_t", b, cfg.text_hidden, cfg.dim)
                + linear("W_ṽ^r", b, cfg.dim, rd) + linear("W_t^r", b, cfg.dim, rd)
                + scores("fused Σ_r (W_m a) b", b, rd, b))
    if name == "vsa":
        e, width = cfg.embed_dim, min(padded_width, cfg.max_len)
        lens = conv_lengths(cfg.max_len, cfg.filter_size, cfg.strides)
        chans = [cfg.word_dim, *cfg.conv_channels]
        gemms = linear("visual enc", b, image_dim, e, grad_input=False)
        gemms += linear("visual dec", b, e, image_dim)
        for i in range(len(cfg.strides)):
            gemms += linear(f"conv{i + 1}", b * lens[i + 1], chans[i] * cfg.filter_size, chans[i + 1])
        gemms += linear("conv last", b, chans[-1] * lens[-1], e)
        gemms += linear("deconv first", b, e, chans[-1] * lens[-1])
        for i in reversed(range(len(cfg.strides))):
            gemms += linear(f"deconv{i + 1}", b * lens[i + 1], chans[i + 1], chans[i] * cfg.filter_size)
        gemms += linear("word logits", b * width, cfg.word_dim, model.vocab_size)
        gemms += scores("sim", b, e, b)
        for pair in ("xx", "yy", "xy"):
            gemms += scores(f"MMD {pair}", b, e, b)
        return gemms
    if name == "mmca":
        d, h, ffn, k = cfg.embed_dim, cfg.n_heads, cfg.ffn_dim or cfg.embed_dim, n_regions
        width, n = min(padded_width, cfg.max_len), min(max(lengths), cfg.max_len)
        gemms = linear("region FC", b * k, image_dim, d, grad_input=False)
        gemms += [g for _ in range(cfg.n_layers) for g in transformer("image attn", b, k, d, h, ffn)]
        gemms += [g for _ in range(cfg.text_layers) for g in transformer("text attn", b, width, d, h, ffn)]
        gemms += ngram_pool("c0 pool", b, width, d, cfg.n_filters)
        if cfg.alpha:
            pairs = b * b
            gemms += [g for _ in range(cfg.n_layers)
                      for g in transformer("cross attn", pairs, k + n, d, h, ffn)]
            gemms += ngram_pool("c1 pool", pairs, n, d, cfg.n_filters)
        return gemms + scores("i0·c0", b, d, b)
    raise ValueError(f"no GEMM list for model {name!r}")


def run_gemms(gemms: list[Gemm], device: torch.device) -> Callable[[], None]:
    """A function that runs every GEMM once (fresh outputs) on operands allocated here, once."""
    operands = {}
    for g in gemms:
        key = (g.batch, g.m, g.k, g.n)
        if key not in operands:
            if g.batch > 1:
                operands[key] = (torch.randn(g.batch, g.m, g.k, device=device),
                                 torch.randn(g.batch, g.k, g.n, device=device))
            else:
                operands[key] = (torch.randn(g.m, g.k, device=device), torch.randn(g.k, g.n, device=device))
    calls = [(torch.bmm if g.batch > 1 else torch.mm, *operands[(g.batch, g.m, g.k, g.n)]) for g in gemms]

    def run() -> None:
        for fn, a, b in calls:
            fn(a, b)

    return run
