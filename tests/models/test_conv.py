"""models/conv.py: channels-last GEMM convolutions against F.conv1d / F.conv_transpose1d (float64),
values and gradients, for VSA's layer shapes in miniature (strides, output padding, k = L)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalable_xmr.models.conv import conv1d_channels_last, conv_transpose1d_channels_last

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grads(module: nn.Module, x: torch.Tensor, out: torch.Tensor, weight: torch.Tensor):
    (out * weight).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    x.grad = None
    module.zero_grad()
    return grads


@pytest.mark.parametrize(("length", "k", "stride"), [(11, 4, 2), (6, 6, 1), (9, 3, 3), (5, 1, 1), (5, 1, 2),
                                                    (7, 2, 1)])
def test_conv1d_matches_torch(length, k, stride):
    torch.manual_seed(k)
    conv = nn.Conv1d(3, 5, k, stride=stride).double()
    x = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    got = conv1d_channels_last(x, conv)  # (B, L_out, C_out)
    weight = torch.randn_like(got)
    got_grads = _grads(conv, x, got, weight)
    ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, stride=stride).transpose(1, 2)
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, _grads(conv, x, ref, weight), strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize(("length", "k", "stride", "extra"), [
    (6, 4, 2, 1), (5, 4, 2, 0), (3, 6, 3, 1),  # k a multiple of s: shifted blocks
    (1, 6, 1, 0), (1, 4, 2, 1),  # one input position
    (4, 3, 2, 0), (3, 4, 3, 2),  # general overlap-add
])
def test_conv_transpose1d_matches_torch(length, k, stride, extra):
    torch.manual_seed(k + extra)
    deconv = nn.ConvTranspose1d(4, 3, k, stride=stride, output_padding=extra).double()
    x = torch.randn(2, length, 4, dtype=torch.float64, requires_grad=True)
    got = conv_transpose1d_channels_last(x, deconv)
    weight = torch.randn_like(got)
    got_grads = _grads(deconv, x, got, weight)
    ref = deconv(x.transpose(1, 2)).transpose(1, 2)
    assert got.shape == ref.shape == (2, (length - 1) * stride + k + extra, 3)
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, _grads(deconv, x, ref, weight), strict=True):
        torch.testing.assert_close(g, r)


def test_padding_is_refused():
    with pytest.raises(ValueError, match="padding 0"):
        conv1d_channels_last(torch.zeros(1, 5, 2), nn.Conv1d(2, 2, 3, padding=1))
