"""Ranking scores do not collapse into float32 ties after a short training (docs/metrics.md).

MTFN used to rank by its float32 sigmoid S_IT: a lightly trained model's scores crowd into a
~1e-2 band around 0.5 and a large share of a test matrix tied, so rankings and re-ranking were
decided by index tie-breaks that flip with BLAS summation order. It now ranks by its logits W_m f.
VSE, VSA and MMCA rank by (sums of) cosines: the same check backs the audit in models/base.py.
MTFN ensembles rank by the mean of their members' S_IT, stored as its float64 log-odds
(branch/report.py evaluate_ensemble): the check holds for what they store too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.member_scores import sims_path
from scalable_xmr.branch.model_file import MODEL_FORMAT
from scalable_xmr.branch.report import evaluate_ensemble
from scalable_xmr.branch.scoring import similarity_matrix
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.models.registry import branch_config
from scalable_xmr.store import torchfile

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = {  # name: (model, changes to the small test config, learning rate)
    # The paper's hardest-negative hinge at a small rate: after 3 epochs this model's sigmoids
    # all lie in a band ~3e-3 wide just above 0.5, where float32 tied over half of the 50 000
    # test scores (measured when writing this test); its logits W_m f stay apart.
    "mtfn-near-0.5": ("mtfn", {"hinge": "max"}, 2e-4),
    # A confident model: its sigmoids saturate towards 0 and 1.
    "mtfn-confident": ("mtfn", {}, 5e-3),
    "vse": ("vse", {}, 5e-3),
    "vsa": ("vsa", {}, 5e-3),
    "mmca": ("mmca", {}, 5e-3),
}


def _distinct_fraction(sim: np.ndarray) -> float:
    return len(np.unique(sim)) / sim.size


@pytest.mark.parametrize("case", list(CASES))
def test_test_split_scores_are_distinct_after_three_epochs(small_pairs, small_configs, case):
    name, changes, lr = CASES[case]
    model_config = {**small_configs[name], **changes}
    ds = open_paired_dataset(small_pairs)
    train, val, test = (ds.read_split(s) for s in ("train", "val", "test"))
    cfg = PairTrainerConfig(model=name, epochs=3, batch_size=16, lr=lr, lr_decay_epochs=0, seed=0)
    trainer = PairTrainer(cfg, branch_config(name, model_config), train, val)
    trainer.fit()
    sim = similarity_matrix(trainer.model, test).numpy()  # what the job writes to sims/test.npy
    assert sim.shape == (100, 500) and sim.dtype == np.float32
    assert _distinct_fraction(sim) >= 0.99, (case, _distinct_fraction(sim), sim.min(), sim.max())


def _stored_ensemble(root, members: list[tuple[np.ndarray, dict]]) -> np.ndarray:
    """What an MTFN ensemble of these (test logits, state_dict) members writes to sims/test.npy."""
    dirs = []
    for i, (logits, state) in enumerate(members):
        d = root / f"mtfn-seed{i}"
        for split in ("val", "test"):  # val = test: only the stored test scores are checked here
            sims_path(d, split).parent.mkdir(parents=True, exist_ok=True)
            np.save(sims_path(d, split), logits)
            np.save(sims_path(d, split, text=True), np.eye(logits.shape[1], dtype=np.float32))
        torchfile.save({"format": MODEL_FORMAT, "model": "mtfn", "state_dict": state}, d / "model.pt")
        dirs.append(str(d))
    evaluate_ensemble("mtfn", dirs, str(root / "mtfn"), (5, 5), ks=(1,), k_texts=(0,))
    return np.load(sims_path(root / "mtfn", "test"))


@pytest.mark.parametrize("case", ["mtfn-near-0.5", "mtfn-confident"])
def test_mtfn_ensemble_scores_are_distinct(small_pairs, small_configs, case, tmp_path):
    name, changes, lr = CASES[case]
    ds = open_paired_dataset(small_pairs)
    train, val, test = (ds.read_split(s) for s in ("train", "val", "test"))
    members = []
    for seed in (0, 1):
        cfg = PairTrainerConfig(model=name, epochs=3, batch_size=16, lr=lr, lr_decay_epochs=0, seed=seed)
        trainer = PairTrainer(cfg, branch_config(name, {**small_configs[name], **changes}), train, val)
        trainer.fit()
        members.append((similarity_matrix(trainer.model, test).numpy(), trainer.model.state_dict()))
    ens = _stored_ensemble(tmp_path, members)
    assert ens.shape == (100, 500) and _distinct_fraction(ens) >= 0.99, (case, _distinct_fraction(ens))


def test_saturated_mtfn_ensemble_scores_are_distinct(tmp_path):
    # logits 30..40: every float32 S_IT is 1.0, so a mean of sigmoids would tie everything
    rng = np.random.default_rng(0)
    members = [(rng.uniform(30, 40, size=(100, 500)).astype(np.float32),
                {"score.bias": torch.tensor([b])}) for b in (0.2, -0.1)]
    s_it = np.mean([torch.sigmoid(torch.from_numpy(x) + s["score.bias"]).numpy() for x, s in members], axis=0)
    assert _distinct_fraction(s_it) == 1 / s_it.size
    assert _distinct_fraction(_stored_ensemble(tmp_path, members)) >= 0.99
