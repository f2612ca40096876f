"""Ranking losses and MMD against hand computations and loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scalable_xmr.errors import InputError
from scalable_xmr.functional.contrastive import hinge_max_violation, hinge_sum, mmd_gaussian

# Rows = images, columns = texts, positives on the diagonal. With margin 0.2 the hinge terms are
#   image queries (rows):   i0: j1 .3, j2 .1   i1: j0 0, j2 .15   i2: j0 .15, j1 0
#   text queries (columns): j0: i1 0, i2 .25   j1: i0 .3, i2 0    j2: i0 0, i1 .05
SIM = torch.tensor([[0.5, 0.6, 0.4], [0.3, 0.5, 0.45], [0.55, 0.1, 0.6]], dtype=torch.float64)


def test_hand_computed_3x3():
    # max: rows .3 + .15 + .15, columns .25 + .3 + .05
    assert float(hinge_max_violation(SIM, 0.2)) == pytest.approx(1.2)
    # sum: rows .4 + .15 + .15, columns .25 + .3 + .05
    assert float(hinge_sum(SIM, 0.2)) == pytest.approx(1.3)
    assert float(hinge_max_violation(SIM, 0.2, bidirectional=False)) == pytest.approx(0.6)
    assert float(hinge_sum(SIM, 0.2, bidirectional=False)) == pytest.approx(0.7)
    assert float(hinge_max_violation(SIM, 0.2, reduction="mean")) == pytest.approx(0.4)
    # margin 0: only s_ij > s_ii counts: row 0 (.6 > .5 -> .1), column 1 (.6 > .5 -> .1),
    # column 0 (.55 > .5 -> .05)
    assert float(hinge_max_violation(SIM, 0.0)) == pytest.approx(0.25)


def test_ignore_mask_removes_negatives():
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 1] = True  # image 0 / text 1 also match: neither row 0 nor column 1 may use it
    # rows .1 + .15 + .15, columns .25 + 0 + .05
    assert float(hinge_max_violation(SIM, 0.2, ignore_mask=mask)) == pytest.approx(0.7)
    # sum: rows .1 + .15 + .15, columns .25 + 0 + .05
    assert float(hinge_sum(SIM, 0.2, ignore_mask=mask)) == pytest.approx(0.7)


def _loop_reference(sim: np.ndarray, margin: float, mask: np.ndarray, hardest: bool) -> float:
    n = sim.shape[0]
    total = 0.0
    for i in range(n):  # image i as query
        costs = [max(0.0, margin - sim[i, i] + sim[i, j]) for j in range(n) if j != i and not mask[i, j]]
        total += (max(costs) if hardest else sum(costs)) if costs else 0.0
    for j in range(n):  # text j as query
        costs = [max(0.0, margin - sim[j, j] + sim[i, j]) for i in range(n) if i != j and not mask[i, j]]
        total += (max(costs) if hardest else sum(costs)) if costs else 0.0
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_loop_reference(seed):
    rng = np.random.default_rng(seed)
    n = 7
    sim = rng.uniform(-1, 1, (n, n))
    mask = rng.random((n, n)) < 0.2
    margin = float(rng.uniform(0, 0.5))
    t_sim, t_mask = torch.tensor(sim), torch.tensor(mask)
    got_max = float(hinge_max_violation(t_sim, margin, ignore_mask=t_mask))
    got_sum = float(hinge_sum(t_sim, margin, ignore_mask=t_mask))
    assert got_max == pytest.approx(_loop_reference(sim, margin, mask, hardest=True))
    assert got_sum == pytest.approx(_loop_reference(sim, margin, mask, hardest=False))


def test_max_violation_gradient_reaches_only_hardest_negatives():
    sim = SIM.clone().requires_grad_(True)
    hinge_max_violation(sim, 0.2).backward()
    grad = sim.grad.numpy()
    # hardest negatives: rows (0,1), (1,2), (2,0); columns (2,0), (0,1), (1,2)
    expected_neg = {(0, 1): 2.0, (1, 2): 2.0, (2, 0): 2.0}
    for i in range(3):
        for j in range(3):
            if i != j:
                assert grad[i, j] == pytest.approx(expected_neg.get((i, j), 0.0))
    assert np.allclose(np.diag(grad), -2.0)  # each positive in one row and one column term


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sim": torch.zeros(2, 3)}, "square"),
        ({"sim": torch.zeros(3)}, "square"),
        ({"sim": torch.zeros(2, 2), "margin": -0.1}, "margin"),
        ({"sim": torch.zeros(2, 2), "margin": "0.2"}, "margin"),
        ({"sim": torch.zeros(2, 2), "margin": float("nan")}, "margin"),
        ({"sim": torch.zeros(2, 2), "ignore_mask": torch.zeros(3, 3, dtype=torch.bool)}, "ignore_mask"),
        ({"sim": torch.zeros(2, 2), "ignore_mask": torch.zeros(2, 2)}, "ignore_mask"),
        ({"sim": torch.zeros(2, 2), "reduction": "avg"}, "reduction"),
    ],
)
@pytest.mark.parametrize("fn", [hinge_max_violation, hinge_sum])
def test_hinge_bad_inputs(fn, kwargs, match):
    with pytest.raises(InputError, match=match):
        fn(**kwargs)


def test_mmd_hand_computed():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0]])
    e = math.exp(-0.5)  # k(0, 1) with sigma 1
    # mean k(x,x') = (2 + 2e)/4, k(y,y) = 1, mean k(x,y) = (1 + e)/2
    expected = (2 + 2 * e) / 4 + 1 - 2 * (1 + e) / 2
    assert float(mmd_gaussian(x, y, sigma=1.0)) == pytest.approx(expected, abs=1e-6)
    assert float(mmd_gaussian(x, x)) == pytest.approx(0.0, abs=1e-7)


def test_mmd_against_loop_reference():
    rng = np.random.default_rng(3)
    x, y, sigma = rng.normal(size=(5, 3)), rng.normal(1.0, 1.0, size=(4, 3)), 1.7

    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * sigma**2))

    kxx = sum(k(a, b) for a in x for b in x) / 25
    kyy = sum(k(a, b) for a in y for b in y) / 16
    kxy = sum(k(a, b) for a in x for b in y) / 20
    got = float(mmd_gaussian(torch.tensor(x), torch.tensor(y), sigma=sigma))
    assert got == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
    assert got == pytest.approx(float(mmd_gaussian(torch.tensor(y), torch.tensor(x), sigma)))


@pytest.mark.parametrize(
    "x, y, sigma, match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), 1.0, "feature dims"),
        (torch.zeros(0, 3), torch.zeros(2, 3), 1.0, "x"),
        (torch.zeros(2, 3), torch.zeros(3), 1.0, "y"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 0.0, "sigma"),
        (torch.zeros(2, 3), torch.zeros(2, 3), -1.0, "sigma"),
    ],
)
def test_mmd_bad_inputs(x, y, sigma, match):
    with pytest.raises(InputError, match=match):
        mmd_gaussian(x, y, sigma)
