"""One modality trained by W data-parallel ranks (sdml/data_parallel.py) gives one process's result.

Without Ray: the shard rule, the loss shares and their DDP gradient (the exactness argument on
numbers), and a rank of one (the ModalityTrainer pieces reused). On the session's local Ray (slow
tier: every TorchTrainer run starts a controller, a placement group and a process group): W=2 and
W=1 against ModalityTrainer, and a worker killed mid-epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_runs import modality_spec_for

from scalable_xmr.config import SDMLConfig
from scalable_xmr.errors import InputError
from scalable_xmr.functional.losses import sdml_loss, sdml_loss_share
from scalable_xmr.functional.retrieval.average_precision import mean_average_precision
from scalable_xmr.models.sdml import SDMLAutoencoder
from scalable_xmr.sdml.data_parallel import RankTrainer, shard_bounds, train_modality_parallel
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store.projection import create_projection
from scalable_xmr.store.run_store import RunStore

# audio of the small synthetic XMedia: 100 train / 20 val / 20 test rows of 16 features, 20
# classes. 100 rows = 4 batches of 25; 25 rows over 2 ranks = 13 + 12 (the uneven rule).
CFG = SDMLConfig(dim=32, hidden=32, epochs=4, batch_size=25, checkpoint_every=2, lr=1e-3)
MODALITY = "audio"
# Tolerances: float32 sums regrouped across ranks (DDP's bucketed all-reduce, per-rank partial
# sums) move the last bits; 4 epochs of Adam keep that near 1e-6 on weights of size ~0.1.
RTOL, ATOL = 1e-4, 1e-5
WORKER = {"CPU": 0.5}  # two ranks on one logical CPU of the session's 2: the driver keeps one


def _job(root: Path, data: str, cfg: SDMLConfig = CFG) -> ModalitySpec:
    return modality_spec_for(root, data, cfg, MODALITY)


class OneRank:
    """A RankContext of a world of one, without Ray: no checkpoint, reports kept."""

    rank, world_size, device = 0, 1, "cpu"

    def __init__(self) -> None:
        self.reports: list[tuple[dict, bool]] = []

    def load_checkpoint(self, loader):
        return None

    def report(self, metrics, checkpoint_dir=None):
        self.reports.append((metrics, checkpoint_dir is not None and (checkpoint_dir / "last.pt").is_file()))


@pytest.mark.parametrize(("n", "world", "sizes"), [
    (25, 2, [13, 12]), (10, 4, [3, 3, 2, 2]), (6, 3, [2, 2, 2]), (5, 1, [5])])
def test_shard_rule_first_ranks_take_the_remainder(n, world, sizes):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert [hi - lo for lo, hi in bounds] == sizes
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, in rank order


def test_shares_add_up_to_the_batch_loss_and_ddp_averaging_gives_its_gradient():
    """3 ranks over a batch of 10 with 3 unlabeled rows (labeled count 7, ranks hold 3/2/2 of
    them): the shares sum to sdml_loss, and the mean over ranks of ∂(W·share) is ∂sdml_loss."""
    torch.manual_seed(0)
    model = SDMLAutoencoder(6, dim=8, hidden=12)
    P = torch.linalg.qr(torch.randn(8, 8))[0][:, :4]  # (d, c)
    x = torch.randn(10, 6)
    y = torch.nn.functional.one_hot(torch.arange(10) % 4, 4).float()
    y[[1, 5, 9]] = 0.0  # unlabeled: reconstruction only
    n_labeled = (y.sum(1) > 0).sum()
    h, x_hat = model(x)
    whole = sdml_loss(x_hat, x, h, P, y, 0.3)
    grad_whole = torch.autograd.grad(whole[0], list(model.parameters()))
    world, shares, grads = 3, [], []
    for r in range(world):
        lo, hi = shard_bounds(10, r, world)
        h, x_hat = model(x[lo:hi])
        share = sdml_loss_share(x_hat, x[lo:hi], h, P, y[lo:hi], 0.3, 10, n_labeled)
        shares.append(torch.stack(share).detach())
        grads.append(torch.autograd.grad(world * share[0], list(model.parameters())))
    torch.testing.assert_close(sum(shares), torch.stack(whole).detach())
    for g_whole, *g_ranks in zip(grad_whole, *grads, strict=True):
        torch.testing.assert_close(sum(g_ranks) / world, g_whole)  # what DDP's average computes


def test_a_rank_alone_trains_as_the_modality_trainer(tmp_path, small_xmedia, one_torch_thread):
    """World of one, no Ray: same weights, history and selection as ModalityTrainer; one report an
    epoch but the last, with the checkpoint every 2 epochs, and the result with the final one."""
    single = ModalityTrainer(_job(tmp_path / "single", small_xmedia))
    expected = single.fit()
    ctx = OneRank()
    rank = RankTrainer(_job(tmp_path / "rank", small_xmedia), ctx)
    rank.run()
    for (k, a), b in zip(single.model.state_dict().items(), rank.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=k)
    result = ctx.reports[-1][0]["result"]
    assert result["best_epoch"] == expected.best_epoch
    assert result["best_val_label"] == pytest.approx(expected.best_val_label, rel=1e-5)
    assert [m.get("epoch") for m, _ in ctx.reports] == [1, 2, 3, None]
    assert [ckpt for _, ckpt in ctx.reports] == [False, True, False, True]
    assert RunStore(tmp_path / "rank" / "run").model_path(MODALITY).is_file()


def test_a_non_finite_loss_stops_every_rank_naming_the_term(tmp_path, small_xmedia, one_torch_thread):
    rank = RankTrainer(_job(tmp_path, small_xmedia), OneRank())
    with torch.no_grad():
        rank.model.decoder[-1].weight.fill_(float("nan"))
    with pytest.raises(InputError, match="modality 'audio': the reconstruction .* not finite at epoch 1"):
        rank.run()


@pytest.mark.parametrize(("workers", "match"), [
    (0, "workers must be a whole number"), (26, r"workers \(26\) must not exceed the batch size \(25\)")])
def test_bad_worker_counts_are_refused_at_the_door(tmp_path, small_xmedia, workers, match):
    with pytest.raises(InputError, match=match):
        train_modality_parallel(_job(tmp_path, small_xmedia), workers)


# ---- on the session's Ray -------------------------------------------------------------------------
def _outputs(run: Path) -> dict:
    store = RunStore(run)
    P = torch.from_numpy(np.array(create_projection(CFG.dim, 20, 0)))  # (d, c): the class anchors
    _, labels, emb = store.read_embeddings(MODALITY, "test", 20)
    test_map = mean_average_precision(emb, P.T.numpy(), labels, np.arange(20))
    return {"state": store.load_model(MODALITY)["state_dict"], "test_map": test_map}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, small_xmedia):
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("single")
        result = ModalityTrainer(_job(root, small_xmedia)).fit()
    finally:
        torch.set_num_threads(torch_threads)
    return result, _outputs(root / "run")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 1])
def test_workers_train_as_one_process(ray_local, tmp_path, small_xmedia, single_process, workers):
    expected, outputs = single_process
    result = train_modality_parallel(_job(tmp_path, small_xmedia), workers, resources_per_worker=WORKER,
                                     start_timeout_s=30)
    got = _outputs(tmp_path / "run")
    for k, a in outputs["state"].items():
        torch.testing.assert_close(got["state"][k], a, rtol=RTOL, atol=ATOL, msg=k)
    assert result.best_epoch == expected.best_epoch and result.epochs == CFG.epochs
    assert result.best_val_label == pytest.approx(expected.best_val_label, rel=1e-5)
    for mine, theirs in zip(result.history, expected.history, strict=True):
        for key in ("loss_train", "loss_recon", "loss_label", "loss_val_label"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key
    assert got["test_map"] == pytest.approx(outputs["test_map"], abs=1e-6)


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(ray_local, tmp_path, small_xmedia,
                                                                    single_process, crash_after):
    """Rank 1 dies (os._exit) after the first step of epoch 3, rank 0 waiting for it in the next
    step's all-reduce: Ray Train starts a new worker group that resumes from the epoch-2
    checkpoint and ends with the uninterrupted run's weights and history."""
    crash_after({f"{MODALITY}/rank1/mid-epoch": 3})
    result = train_modality_parallel(_job(tmp_path, small_xmedia), 2, resources_per_worker=WORKER,
                                     max_failures=1, start_timeout_s=30)
    marker = RunStore(tmp_path / "run").checkpoint_path(MODALITY).parent / ".fault_injected"
    assert marker.read_text().split()[1] == "3"  # the fault did fire, during epoch 3
    assert result.resumed_at_epoch == [2] and result.epochs == CFG.epochs
    assert [h["epoch"] for h in result.history] == list(range(1, CFG.epochs + 1))
    for mine, theirs in zip(result.history, single_process[0].history, strict=True):
        assert mine["loss_train"] == pytest.approx(theirs["loss_train"], rel=1e-5)
    got = _outputs(tmp_path / "run")
    for k, a in single_process[1]["state"].items():
        torch.testing.assert_close(got["state"][k], a, rtol=RTOL, atol=ATOL, msg=k)
