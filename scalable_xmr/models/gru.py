"""The last hidden state of a one-layer GRU over padded captions, as few large GEMMs as the maths allows.

``torch.nn.GRU`` over a packed sequence on the CPU runs the input projection W_i x once per time
step, and autograd's backward then runs, per time step, the weight gradients and a dozen small
element-wise kernels: VSE's step ran at 74% of the GEMM rate for its shapes on one thread, 18% on
two threads of a loaded machine (bench/branch_speed.py). :func:`gru_last_hidden` computes the same
equations (``torch.nn.GRU``'s, gate order r, z, n):

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1},   h_0 = 0

laid out so the work that does not depend on h_{t-1} is batched over all the tokens of the batch:

- forward: one GEMM W_i x for every real token (N_tok x word_dim x 3H), then per step one GEMM
  W_h h_{t-1} (B_t x H x 3H) and the gate arithmetic (step 1 has h_0 = 0: W_h h_0 = 0, no GEMM);
- backward (hand-written, :class:`_GRURecurrence`): per step one GEMM for the gradient of h_{t-1}
  (B_t x 3H x H); after the loop ONE GEMM for the gradient of W_h over every step, and autograd's
  two for W_i and x.

Captions are sorted by length (longest first), as ``pack_padded_sequence`` does, so step t works
on the first B_t rows only (padding costs nothing). The result is identical in exact arithmetic;
float32 results differ from ``nn.GRU`` by summation order only (tests/models/test_gru.py compares
values and gradients with a caption-by-caption reference loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gru_last_hidden", "pack_by_length"]


def pack_by_length(
    tokens: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Time-major packing of padded ``tokens (B, T)`` by ``lengths (B,)``.

    Returns ``(packed (N_tok,), order (B,), batch_sizes)``: ``order`` sorts captions longest
    first; step t's tokens are rows ``sum(batch_sizes[:t]) ..`` of ``packed``, one per caption
    ``order[:batch_sizes[t]]``.
    """
    lengths_cpu = lengths.cpu()
    order = torch.argsort(lengths_cpu, descending=True, stable=True)  # (B,)
    sorted_len = lengths_cpu[order]  # (B,) non-increasing
    steps = int(sorted_len[0])
    batch_sizes = [int((sorted_len > t).sum()) for t in range(steps)]
    order = order.to(tokens.device)
    mask = torch.arange(steps)[:, None] < sorted_len[None, :]  # (T, B) real tokens, time-major
    packed = tokens[order, :steps].T[mask.to(tokens.device)]  # (N_tok,)
    return packed, order, batch_sizes


class _GRURecurrence(torch.autograd.Function):
    """h at each sequence's last step from precomputed input projections ``gi = W_i x + b_i``.

    The forward keeps, per token row, the four factors that turn dL/dh_t into the gradients of
    the gate pre-activations (computed once over every row after the loop, so the backward loop
    runs one GEMM and two multiplications per step):

        dL/d(r pre) = dh · (1−z)(1−n²) · ghn · r(1−r)      (ghn = W_hn h_{t-1} + b_hn)
        dL/d(z pre) = dh · (h_{t-1} − n) · z(1−z)
        dL/d(W_hn h + b_hn) = dh · (1−z)(1−n²) · r,   dL/d(W_in x + b_in) = dh · (1−z)(1−n²)
        dL/dh_{t-1} = dh · z + [dL/d(r pre), dL/d(z pre), dL/d(W_hn h + b_hn)] W_h
    """

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, batch_sizes):  # noqa: ANN001, ANN205 - autograd signature
        hidden, n_tok, n_seq = w_hh.shape[1], gi.shape[0], batch_sizes[0]
        h_prev = gi.new_zeros(n_tok, hidden)  # (N_tok, H): h_{t-1} of each token row
        gh = gi.new_empty(n_tok, 3 * hidden)  # (N_tok, 3H): W_h h_{t-1} + b_h
        rz = gi.new_empty(n_tok, 2 * hidden)  # (N_tok, 2H): r_t, z_t
        n = gi.new_empty(n_tok, hidden)  # (N_tok, H): n_t
        last = gi.new_empty(n_seq, hidden)  # (B, H): h at each sequence's last step
        h = gi.new_zeros(n_seq, hidden)
        start = 0
        for step, b in enumerate(batch_sizes):
            rows = slice(start, start + b)
            if b < h.shape[0]:  # sequences b.. ended at the previous step
                last[b : h.shape[0]] = h[b:]
                h = h[:b]
            if step == 0:  # h_0 = 0: W_h h_0 = 0
                gh[rows] = b_hh
            else:
                h_prev[rows] = h
                torch.addmm(b_hh, h, w_hh.t(), out=gh[rows])  # (b, 3H): the step's GEMM
            g, gh_t, rz_t, n_t = gi[rows], gh[rows], rz[rows], n[rows]
            torch.add(g[:, : 2 * hidden], gh_t[:, : 2 * hidden], out=rz_t).sigmoid_()  # r, z
            torch.mul(rz_t[:, :hidden], gh_t[:, 2 * hidden :], out=n_t).add_(g[:, 2 * hidden :]).tanh_()
            h = torch.lerp(n_t, h, rz_t[:, hidden:])  # (1 − z) n + z h
            start += b
        last[: h.shape[0]] = h
        if not any(ctx.needs_input_grad):  # evaluation: no backward will come
            return last
        r, z, ghn = rz[:, :hidden], rz[:, hidden:], gh[:, 2 * hidden :]
        factors = gi.new_empty(n_tok, 4, hidden)  # (N_tok, 4, H): d r, d z, d ghn, d gi_n per dh
        a_n = factors[:, 3]
        torch.mul(n, n, out=a_n).neg_().add_(1).mul_(1 - z)  # (1−z)(1−n²)
        torch.mul(a_n, r, out=factors[:, 2])
        torch.mul(factors[:, 2], ghn, out=factors[:, 0]).mul_(1 - r)
        torch.sub(h_prev, n, out=factors[:, 1]).mul_(z).mul_(1 - z)
        ctx.save_for_backward(w_hh, h_prev, z, factors)
        ctx.batch_sizes = batch_sizes
        return last

    @staticmethod
    def backward(ctx, grad_last):  # noqa: ANN001, ANN205 - autograd signature
        w_hh, h_prev, z, factors = ctx.saved_tensors
        batch_sizes, hidden = ctx.batch_sizes, w_hh.shape[1]
        n_tok = h_prev.shape[0]
        d_gh = h_prev.new_empty(n_tok, 3, hidden)  # (N_tok, 3, H): dL/d(W_h h + b_h)
        d_h = h_prev.new_empty(n_tok, hidden)  # (N_tok, H): dL/dh_t of every token row
        dh = grad_last.new_zeros(0, hidden)
        end = n_tok
        for step in range(len(batch_sizes) - 1, -1, -1):
            b = batch_sizes[step]
            rows = slice(end - b, end)
            if dh.shape[0] < b:  # sequences that end at this step: their gradient enters here
                dh = torch.cat([dh, grad_last[dh.shape[0] : b]])
            d_h[rows] = dh
            torch.mul(dh.unsqueeze(1), factors[rows, :3], out=d_gh[rows])
            if step > 0:  # h_0 is the constant 0
                dh = torch.addmm(dh * z[rows], d_gh[rows].view(b, 3 * hidden), w_hh)  # dL/dh_{t-1}
            end -= b
        d_gh = d_gh.view(n_tok, 3 * hidden)
        d_gi = torch.cat([d_gh[:, : 2 * hidden], d_h * factors[:, 3]], dim=1)  # (N_tok, 3H)
        first = batch_sizes[0]  # rows of step 1 saw h_0 = 0: no W_h gradient from them
        d_w_hh = d_gh[first:].t() @ h_prev[first:]  # (3H, H): one GEMM over every step
        return d_gi, d_w_hh, d_gh.sum(0), None


def gru_last_hidden(
    x_packed: torch.Tensor, batch_sizes: list[int], gru: torch.nn.GRU
) -> torch.Tensor:
    """h at each sequence's last step ``(B, H)`` (sorted order of :func:`pack_by_length`) of the
    one-layer unidirectional ``gru`` over time-major packed inputs ``x_packed (N_tok, in)``."""
    gi = F.linear(x_packed, gru.weight_ih_l0, gru.bias_ih_l0)  # (N_tok, 3H): one GEMM
    return _GRURecurrence.apply(gi, gru.weight_hh_l0, gru.bias_hh_l0, batch_sizes)
