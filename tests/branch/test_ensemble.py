"""Ensembles (MTFN-RR §4, Table 4): MTFN members are combined by the mean of their S_IT =
sigmoid(W_m f + b_m), checked against a float64 NumPy mean of sigmoids written here; other models
average their stored scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import recall_at_k_loop

from scalable_xmr.branch.evaluate import mean_sigmoid_log_odds
from scalable_xmr.branch.member_scores import sims_path
from scalable_xmr.branch.model_file import MODEL_FORMAT
from scalable_xmr.branch.report import MEAN_S_IT, MEAN_SCORES, evaluate_ensemble
from scalable_xmr.errors import InputError
from scalable_xmr.store import torchfile


def mean_miss(logits: list[np.ndarray], biases: list[float]) -> np.ndarray:
    """float64 mean over members of sigmoid(-(logit + b)) = 1 - S_IT: the reference ranks
    ASCENDING by it (1 - S_IT stays resolvable where S_IT rounds to 1)."""
    miss = [1.0 / (1.0 + np.exp(x.astype(np.float64) + b)) for x, b in zip(logits, biases, strict=True)]
    return np.mean(miss, axis=0)


def _member(root, name, logits, bias, model="mtfn", seed=0):
    """A member directory as train_branch leaves it: sims (val = test here), text sims, model.pt."""
    d = root / name
    text = np.random.default_rng(seed).normal(size=(logits.shape[1],) * 2).astype(np.float32)
    for split in ("val", "test"):
        sims_path(d, split).parent.mkdir(parents=True, exist_ok=True)
        np.save(sims_path(d, split), logits.astype(np.float32))
        np.save(sims_path(d, split, text=True), text)
    payload = {"format": MODEL_FORMAT, "model": model, "state_dict": {"score.bias": torch.tensor([bias])}}
    torchfile.save(payload, d / "model.pt")
    return str(d)


def _ensemble(tmp_path, logits, biases, per_image, model="mtfn"):
    dirs = [_member(tmp_path, f"m{i}", x, b, model, seed=i)
            for i, (x, b) in enumerate(zip(logits, biases, strict=True))]
    out = evaluate_ensemble(model, dirs, str(tmp_path / "ens"), (per_image, per_image), ks=(1,), k_texts=(0,))
    return out, np.load(sims_path(tmp_path / "ens", "test")), dirs


def _orders(score: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stable rankings of every row (I2T) and every column (T2I)."""
    key = -score if descending else score
    return np.argsort(key, axis=1, kind="stable"), np.argsort(key, axis=0, kind="stable")


def _check_against_reference(ens: np.ndarray, logits, biases, per_image, out):
    miss = mean_miss(logits, biases)
    got_rows, got_cols = _orders(ens, descending=True)
    ref_rows, ref_cols = _orders(miss, descending=False)
    np.testing.assert_array_equal(got_rows, ref_rows)
    np.testing.assert_array_equal(got_cols, ref_cols)
    assert out["test"]["plain"] == pytest.approx(recall_at_k_loop(-miss, per_image))


def test_the_mean_of_sigmoids_flips_the_top_caption(tmp_path):
    # 2 images x 1 caption. Image 0 scores its caption 0 with logits (2, 1) and caption 1 with
    # (10, -6): mean logits 1.5 < 2 put caption 1 first, mean sigmoids 0.81 > 0.50 caption 0.
    a = np.array([[2.0, 10.0], [0.0, 5.0]])
    b = np.array([[1.0, -6.0], [0.0, 5.0]])
    out, ens, _ = _ensemble(tmp_path, [a, b], [0.0, 0.0], per_image=1)
    _check_against_reference(ens, [a, b], [0.0, 0.0], 1, out)
    assert out["test"]["plain"]["i2t@1"] == 100.0
    assert recall_at_k_loop((a + b) / 2, 1)["i2t@1"] == 50.0  # what the mean of logits reported
    assert out["score"] == MEAN_S_IT and ens.dtype == np.float64


def test_saturated_logits_keep_their_order(tmp_path):
    rng = np.random.default_rng(0)
    logits = [rng.uniform(30, 40, size=(6, 12)).astype(np.float32) for _ in range(3)]
    biases = [0.3, -0.2, 0.1]
    s_it = [torch.sigmoid(torch.from_numpy(x) + b).numpy() for x, b in zip(logits, biases, strict=True)]
    assert np.all(np.mean(s_it, axis=0) == 1.0)  # float32 S_IT: every pair tied
    out, ens, _ = _ensemble(tmp_path, logits, biases, per_image=2)
    _check_against_reference(ens, logits, biases, 2, out)
    assert len(np.unique(ens)) == ens.size


def test_members_biases_and_everyday_logits(tmp_path):
    rng = np.random.default_rng(1)
    logits = [rng.normal(0, 4, size=(10, 20)).astype(np.float32) for _ in range(2)]
    biases = [2.5, -1.0]  # each member's b_m shifts its S_IT: the ensemble must add it
    out, ens, dirs = _ensemble(tmp_path, logits, biases, per_image=2)
    _check_against_reference(ens, logits, biases, 2, out)
    # S_TT neighbours: the members' stored text scores averaged as stored (see evaluate_ensemble)
    mean_text = np.mean([np.load(sims_path(d, "test", text=True)) for d in dirs], axis=0)
    np.testing.assert_allclose(np.load(sims_path(tmp_path / "ens", "test", text=True)), mean_text, rtol=1e-6)
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["score"] == MEAN_S_IT


def test_cosine_models_average_their_scores(tmp_path):
    rng = np.random.default_rng(2)
    sims = [rng.uniform(-1, 1, size=(4, 8)).astype(np.float32) for _ in range(2)]
    out, ens, _ = _ensemble(tmp_path, sims, [0.0, 0.0], per_image=2, model="vse")
    np.testing.assert_allclose(ens, np.mean(sims, axis=0), rtol=1e-6)
    assert out["score"] == MEAN_SCORES


def test_one_member_gives_its_logit_plus_bias():
    x = np.random.default_rng(3).normal(0, 10, size=(3, 5))
    np.testing.assert_allclose(mean_sigmoid_log_odds([x], [0.7]).numpy(), x + 0.7, rtol=1e-12, atol=1e-12)


def test_bad_members_are_refused(tmp_path):
    logits = [np.zeros((2, 4), np.float32)] * 2
    dirs = [_member(tmp_path, "a", logits[0], 0.0), _member(tmp_path, "b", logits[1], 0.0, model="vse")]
    with pytest.raises(InputError, match="model.pt: a 'vse' model, not a member of the mtfn ensemble"):
        evaluate_ensemble("mtfn", dirs, str(tmp_path / "ens"), (2, 2))
    (tmp_path / "b" / "model.pt").unlink()
    with pytest.raises(InputError, match="model.pt: not found; an mtfn ensemble needs each member's b_m"):
        evaluate_ensemble("mtfn", dirs, str(tmp_path / "ens"), (2, 2))
    with pytest.raises(InputError, match="1 offsets for 2 matrices"):
        mean_sigmoid_log_odds(logits, [0.0])
    with pytest.raises(InputError, match=r"sim\[1\] has shape \(2, 3\)"):
        mean_sigmoid_log_odds([logits[0], logits[1][:, :3]], [0.0, 0.0])
