"""1-d convolutions and transposed convolutions as one GEMM each, on channels-last tensors.

``nn.Conv1d`` / ``nn.ConvTranspose1d`` on the CPU went through oneDNN kernels whose backward took
about half of VSA's training step for its small caption autoencoder (torch.profiler,
bench/branch_speed.py --profile). The same sums as one matrix product each:

- convolution (no padding, stride s): every output position sees a window of k input positions;
  the windows are gathered (``unfold``) into a ``(B·L_out, C_in·k)`` matrix and multiplied by the
  ``(C_in·k, C_out)`` weight -- ``y[b, :, i] = Σ_j W[:, :, j] x[b, :, s·i + j] + bias``;
- transposed convolution (the adjoint map, no padding, stride s, ``output_padding`` extra zero
  positions at the end): one ``(B·L_in, C_in)`` x ``(C_in, C_out·k)`` product, then each of the k
  taps is added at positions ``s·i + j`` (overlap-add) -- ``y[b, :, s·i + j] += W[:, :, j]ᵀ x[b, :, i]``.

Both take the module's own parameters (state dicts are unchanged) and keep activations
channels-last ``(B, L, C)`` so no transposes sit between layers. Identical to ``F.conv1d`` /
``F.conv_transpose1d`` up to float summation order (tests/models/test_conv.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv1d_channels_last", "conv_transpose1d_channels_last"]


def _check(layer: nn.Module) -> None:
    if layer.padding != (0,) or layer.dilation != (1,) or layer.groups != 1:
        raise ValueError(f"{layer}: only padding 0, dilation 1, groups 1 are supported")


def conv1d_channels_last(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv(x)`` for ``x (B, L, C_in)``; returns ``(B, L_out, C_out)``."""
    _check(conv)
    (k,), (stride,) = conv.kernel_size, conv.stride
    n, length, c_in = x.shape
    c_out = conv.out_channels
    weight = conv.weight.transpose(1, 2).reshape(c_out, k * c_in)  # (C_out, k·C_in): tap-major
    if length == k:  # one window covering the whole input (VSA's last layer): a plain reshape
        l_out, cols = 1, x.reshape(n, k * c_in)
    elif k == 1 and stride == 1:  # a position-wise map (MMCA's 1-grams)
        l_out, cols = length, x.reshape(n * length, c_in)
    else:
        windows = x.unfold(1, k, stride).transpose(2, 3)  # (B, L_out, k, C_in): a view
        l_out = windows.shape[1]
        cols = windows.reshape(n * l_out, k * c_in)  # (B·L_out, k·C_in): the im2col copy
    y = F.linear(cols, weight, conv.bias)  # (B·L_out, C_out): one GEMM
    return y.view(n, l_out, c_out)


def conv_transpose1d_channels_last(x: torch.Tensor, deconv: nn.ConvTranspose1d) -> torch.Tensor:
    """``deconv(x)`` for ``x (B, L_in, C_in)``; returns ``(B, L_out, C_out)``,
    ``L_out = (L_in − 1)·s + k + output_padding``."""
    _check(deconv)
    (k,), (stride,), (extra,) = deconv.kernel_size, deconv.stride, deconv.output_padding
    n, l_in, c_in = x.shape
    c_out = deconv.out_channels
    weight = deconv.weight.transpose(1, 2).reshape(c_in, k * c_out)  # (C_in, k·C_out): tap-major
    taps = (x.reshape(n * l_in, c_in) @ weight).view(n, l_in, k, c_out)  # one GEMM
    l_out = (l_in - 1) * stride + k + extra
    if l_in == 1:  # one input position (VSA's first decoder layer): the taps are the output
        y = F.pad(taps.view(n, k, c_out), (0, 0, 0, extra))
    elif k % stride == 0:  # tap j = q·s + r of input i lands at s·(i + q) + r: k/s shifted blocks
        rows = l_in + k // stride - 1 + -(-extra // stride)  # output positions / s, rounded up
        y = sum(F.pad(taps[:, :, q * stride : (q + 1) * stride], (0, 0, 0, 0, q, rows - l_in - q))
                for q in range(k // stride))  # (B, rows, s, C_out)
        y = y.reshape(n, rows * stride, c_out)[:, :l_out]
    else:  # general overlap-add: tap j of input i lands at s·i + j
        span = (l_in - 1) * stride + 1
        y = x.new_zeros(n, l_out, c_out)
        for j in range(k):
            y[:, j : j + span : stride] += taps[:, :, j]
    return y + deconv.bias if deconv.bias is not None else y
