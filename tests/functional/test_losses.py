import math

import pytest
import torch

from scalable_xmr.functional.losses import sdml_loss
from scalable_xmr.models.sdml import SDMLAutoencoder


def test_sdml_loss_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # per-sample errors: 1 and 2 -> mean 1.5
    h = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    P = torch.eye(2)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # ‖Pᵀh − y‖: row 0 -> 0, row 1 -> ‖(0.6, -0.2)‖ = sqrt(0.4)
    total, recon, label = sdml_loss(x_hat, x, h, P, y, lam=0.5)
    assert recon.item() == pytest.approx(1.5)
    assert label.item() == pytest.approx(math.sqrt(0.4) / 2)
    assert total.item() == pytest.approx(0.5 * 1.5 + 0.5 * math.sqrt(0.4) / 2)
    # λ = 1: reconstruction only; λ = 0: label only.
    assert sdml_loss(x_hat, x, h, P, y, lam=1.0)[0].item() == pytest.approx(1.5)
    assert sdml_loss(x_hat, x, h, P, y, lam=0.0)[0].item() == pytest.approx(math.sqrt(0.4) / 2)


def test_unlabeled_rows_only_reconstruct():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    h = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    P = torch.eye(2)
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # row 1 unlabeled: label mean over row 0 alone
    _, recon, label = sdml_loss(x_hat, x, h, P, y, lam=0.3)
    assert label.item() == pytest.approx(math.sqrt(2.0))  # ‖(1, -1)‖
    assert recon.item() == pytest.approx(1.5)  # both rows reconstruct
    none = torch.zeros(2, 2)
    total, _, label = sdml_loss(x_hat, x, h, P, none, lam=0.3)
    assert label.item() == 0.0 and total.item() == pytest.approx(0.3 * 1.5)


def test_rectangular_projection_and_multi_hot():
    # P is d x c with d > c; multi-hot y; compare with an explicit loop.
    g = torch.Generator().manual_seed(0)
    P = torch.linalg.qr(torch.randn(5, 5, generator=g))[0][:, :3]
    h = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=1)
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    x, x_hat = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    lam = 0.25
    rec = sum(math.sqrt(sum((x_hat[i, j] - x[i, j]).item() ** 2 for j in range(7))) for i in range(4)) / 4
    labeled = [i for i in range(4) if y[i].sum() > 0]
    lab = 0.0
    for i in labeled:
        proj = [sum(P[k, j].item() * h[i, k].item() for k in range(5)) for j in range(3)]
        lab += math.sqrt(sum((proj[j] - y[i, j].item()) ** 2 for j in range(3)))
    lab /= len(labeled)
    total, _, _ = sdml_loss(x_hat, x, h, P, y, lam)
    assert total.item() == pytest.approx(lam * rec + (1 - lam) * lab, rel=1e-5)


def test_autoencoder_shapes_and_normalisation():
    model = SDMLAutoencoder(input_dim=12, dim=8, hidden=16)
    x = torch.randn(30, 12) * 50 + 7
    model.fit_normalizer(x)
    xn = model.normalize(x)
    assert torch.allclose(xn.mean(0), torch.zeros(12), atol=1e-4)
    assert torch.allclose(xn.std(0, unbiased=False), torch.ones(12), atol=1e-4)
    h, x_hat = model(xn)
    assert h.shape == (30, 8) and x_hat.shape == (30, 12)
    assert torch.allclose(h.norm(dim=1), torch.ones(30), atol=1e-5)  # L2-normalised codes
    # encode() = normalise + encoder, batched
    assert torch.allclose(model.encode(x, batch_size=7), model.encode_normalized(xn), atol=1e-6)
    # Architecture: dim -> 1024 -> 1024 -> d by default
    big = SDMLAutoencoder(4096)
    sizes = [m.out_features for m in big.encoder if isinstance(m, torch.nn.Linear)]
    assert sizes == [1024, 1024, 512]
    sizes = [m.out_features for m in big.decoder if isinstance(m, torch.nn.Linear)]
    assert sizes == [1024, 1024, 4096]
