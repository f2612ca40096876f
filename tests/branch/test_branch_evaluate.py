"""branch.evaluate with both T2I neighbour groups, against the loop reference (tests/reference.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference import rerank_i2t_loop, rerank_t2i_loop

from scalable_xmr.branch.evaluate import (
    RerankChoice,
    RerankGrid,
    recall_report,
    rerank_grid,
)
from scalable_xmr.branch.member_scores import sims_path
from scalable_xmr.branch.report import evaluate_ensemble
from scalable_xmr.errors import InputError

N = 2  # captions per image: caption j belongs to image j // N


def _recalls(orders: dict[int, list[int]], direction: str) -> dict[str, float]:
    """R@1/5/10 (%) from re-ranked lists: image q's list of texts, or text q's list of images."""
    ranks = []
    for q, order in sorted(orders.items()):
        if direction == "i2t":
            ranks.append(min(order.index(t) for t in range(N * q, N * q + N)))
        else:
            ranks.append(order.index(q // N))
    return {f"{direction}@{k}": 100.0 * sum(r < k for r in ranks) / len(ranks) for k in (1, 5, 10)}


def _sims(seed: int, n_img: int = 7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_img, n_img * N)), rng.normal(size=(n_img * N, n_img * N))


@pytest.mark.parametrize("groups", ["candidate", "query"])
def test_grid_and_test_report_rerank_t2i_with_the_given_groups(groups):
    sim, text_sim = _sims(seed=3)
    grid = RerankGrid(k_i2t=(1, 3), k_t2i=(1, 3, 7), k_text=(0, 1, 4))
    rows = rerank_grid(sim, text_sim, N, grid, t2i_groups=groups)
    for row in rows["i2t"]:
        assert row == pytest.approx({"k": row["k"], **_recalls(rerank_i2t_loop(sim, row["k"]), "i2t")})
    for row in rows["t2i"]:
        expected = _recalls(rerank_t2i_loop(sim, row["k"], text_sim, row["k_text"], groups=groups), "t2i")
        assert row == pytest.approx({"k": row["k"], "k_text": row["k_text"], **expected})
    report = recall_report(sim, text_sim, N, RerankChoice(3, 7, 4), t2i_groups=groups)
    expected = _recalls(rerank_t2i_loop(sim, 7, text_sim, 4, groups=groups), "t2i")
    assert {k: report["rerank"][k] for k in expected} == pytest.approx(expected)


def test_the_two_groups_give_different_figures_here():
    sim, text_sim = _sims(seed=3)
    grid = RerankGrid(k_i2t=(1,), k_t2i=(7,), k_text=(1, 4))
    candidate = rerank_grid(sim, text_sim, N, grid)  # the default
    assert candidate == rerank_grid(sim, text_sim, N, grid, t2i_groups="candidate")
    assert candidate["t2i"] != rerank_grid(sim, text_sim, N, grid, t2i_groups="query")["t2i"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, ts: rerank_grid(s, ts, N, RerankGrid((1,), (1,), (0,)), t2i_groups="both"),
         "t2i_groups must be one of candidate, query, got 'both'"),
        (lambda s, ts: recall_report(s, ts, N, None, t2i_groups="Query"),
         "t2i_groups must be one of candidate, query, got 'Query'"),
        (lambda s, ts: recall_report(s, ts[:5], N, RerankChoice(1, 1, 0)),
         r"text_sim must be \(14, 14\) for sim \(7, 14\) \(captions x captions\), got \(5, 14\)"),
    ],
)
def test_bad_groups_and_shapes_are_refused(call, match):
    sim, text_sim = _sims(seed=0)
    with pytest.raises(InputError, match=match):
        call(sim, text_sim)


def test_ensemble_records_its_groups(tmp_path):
    rng = np.random.default_rng(1)
    dirs = []
    for m in range(2):
        d = tmp_path / f"m{m}"
        for split, n_img in (("val", 4), ("test", 3)):
            sims_path(d, split).parent.mkdir(parents=True, exist_ok=True)
            np.save(sims_path(d, split), rng.random((n_img, n_img * N)).astype(np.float32))
            np.save(sims_path(d, split, text=True), rng.random((n_img * N, n_img * N)).astype(np.float32))
        dirs.append(str(d))
    out = evaluate_ensemble("vse", dirs, str(tmp_path / "ens"), (N, N), ks=(2,), k_texts=(1,),
                            t2i_groups="query")
    assert out["t2i_groups"] == "query"
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["t2i_groups"] == "query"
    with pytest.raises(InputError, match="t2i_groups must be one of candidate, query"):
        evaluate_ensemble("vse", dirs, str(tmp_path / "ens2"), (N, N), t2i_groups="all")
