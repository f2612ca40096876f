"""Population training equals N separate ModalityTrainer trainings (within float tolerance)."""

import dataclasses

import numpy as np
import pytest
import torch

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.errors import InputError
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.population import PopulationTrainer, check_compatible
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore

BASE = SDMLConfig(dim=32, hidden=48, epochs=4, batch_size=20, checkpoint_every=2)
# Different λ, learning rates and seeds (two slots share a seed: same init and batch order).
CONFIGS = [dataclasses.replace(BASE, lam=0.5, lr=1e-3, seed=0),
           dataclasses.replace(BASE, lam=0.1, lr=3e-3, seed=1),
           dataclasses.replace(BASE, lam=0.9, lr=5e-4, seed=0)]
TOL = {"rtol": 2e-4, "atol": 2e-5}


def _job(run, data, cfg, modality="image", **kw):
    ds = open_dataset(data)
    run.mkdir(parents=True, exist_ok=True)
    digest = save_projection(run / "projection.arrow", create_projection(cfg.dim, ds.info.n_classes, 0))
    return ModalitySpec(run_dir=str(run), modality=modality, config=cfg, dataset_uri=data,
                       n_classes=ds.info.n_classes, projection_sha256=digest, **kw)


def _separate(tmp_path, data, epochs):
    """Each configuration trained on its own by ModalityTrainer, ``epochs`` epochs."""
    out = []
    for i, cfg in enumerate(CONFIGS):
        trainer = ModalityTrainer(_job(tmp_path / f"single{i}", data, cfg))
        for _ in range(epochs):
            trainer.record(trainer.train_epoch())
        out.append(trainer)
    return out


@pytest.mark.parametrize("kernel", ["bmm", "vmap"])
def test_population_equals_separate_trainings(tmp_path, small_xmedia, one_torch_thread, kernel):
    epochs = 4
    singles = _separate(tmp_path, small_xmedia, epochs)
    pop = PopulationTrainer(_job(tmp_path / "pop", small_xmedia, CONFIGS[0]), CONFIGS, kernel=kernel)
    for _ in range(epochs):
        pop.record(pop.train_epoch())
    for i, single in enumerate(singles):
        slot = pop.slots[i]
        assert slot.lr == CONFIGS[i].lr and slot.failed is None
        for key in ("loss_train", "loss_recon", "loss_label", "loss_val_label"):  # every epoch
            np.testing.assert_allclose([h[key] for h in slot.history], [h[key] for h in single.history],
                                       **TOL, err_msg=f"slot {i} {key}")
        # Selection rule: the epoch of the lowest val label loss (its own history, and the trainer's).
        vals = [h["loss_val_label"] for h in slot.history]
        assert slot.best_epoch == int(np.argmin(vals)) + 1
        single_vals = [h["loss_val_label"] for h in single.history]
        if abs(sorted(single_vals)[0] - sorted(single_vals)[1]) > 1e-4:  # no near-tie to flip
            assert slot.best_epoch == single.best_epoch
        assert slot.best_val == pytest.approx(single.best_val, rel=2e-4)
        # Parameters after k epochs, and the selected epoch's parameters.
        current = pop.net.slot_state(i)
        for name, value in single.model.state_dict().items():
            torch.testing.assert_close(current[name], value, **TOL, msg=f"slot {i} {name}")
        if slot.best_epoch == single.best_epoch:
            best = pop.net.slot_state(i, pop.best_params)
            for name, value in single.best_state.items():
                torch.testing.assert_close(best[name], value, **TOL, msg=f"slot {i} best {name}")


def test_initial_weights_are_each_seeds(tmp_path, small_xmedia, one_torch_thread):
    """Before any step every slot holds exactly its ModalityTrainer's initial weights."""
    pop = PopulationTrainer(_job(tmp_path / "pop", small_xmedia, CONFIGS[0]), CONFIGS)
    for i, cfg in enumerate(CONFIGS):
        single = ModalityTrainer(_job(tmp_path / f"s{i}", small_xmedia, cfg))
        for name, value in single.model.state_dict().items():
            torch.testing.assert_close(pop.net.slot_state(i)[name], value, rtol=0, atol=0, msg=name)


def test_fit_writes_each_member_and_resumes(tmp_path, small_xmedia, one_torch_thread):
    straight = PopulationTrainer(_job(tmp_path / "a", small_xmedia, CONFIGS[0]), CONFIGS)
    seen = []
    dirs = [tmp_path / "out" / str(i) for i in range(len(CONFIGS))]
    straight.fit(lambda stats, ck: seen.append((stats[0].epoch, ck, len(stats))), out_dirs=dirs)
    assert seen == [(1, False, 3), (2, True, 3), (3, False, 3), (4, True, 3)]
    for i, d in enumerate(dirs):
        payload = RunStore(d).load_model("image")
        assert payload["best_epoch"] == straight.slots[i].best_epoch
        assert payload["sdml_config"] == CONFIGS[i].to_dict()
        _, _, emb = RunStore(d).read_embeddings("image", "test", 20)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    # 2 epochs, a checkpoint, a new process's trainer resumes and ends where the straight one did.
    cfgs = CONFIGS
    first = PopulationTrainer(_job(tmp_path / "b", small_xmedia, cfgs[0]), cfgs)
    for _ in range(2):
        first.record(first.train_epoch())
    first.save_checkpoint()
    resumed = PopulationTrainer(_job(tmp_path / "b", small_xmedia, cfgs[0]), cfgs)
    assert resumed.epoch == 2 and resumed.resumed_at == [2]
    resumed.fit()
    for k, v in straight.net.params.items():
        torch.testing.assert_close(resumed.net.params[k], v, msg=k)
    assert [m.best_epoch for m in resumed.slots] == [m.best_epoch for m in straight.slots]


def test_members_must_share_shapes():
    check_compatible(CONFIGS)
    with pytest.raises(InputError, match=r"population slot 1: hidden=64 differs from slot 0's 48"):
        check_compatible([CONFIGS[0], dataclasses.replace(BASE, hidden=64)])
    with pytest.raises(InputError, match="at least one configuration"):
        check_compatible([])


def test_weights_are_stored_transposed_so_their_gradients_need_no_copy(tmp_path, small_xmedia,
                                                                        one_torch_thread):
    """Linear weights live as (N, in, out): the step's GEMMs produce their gradients in that layout
    (contiguous, no AccumulateGrad copy), and a slot's state_dict is the module's (out, in)."""
    pop = PopulationTrainer(_job(tmp_path, small_xmedia, BASE), CONFIGS[:2])
    w = pop.net.params["encoder.0.weight"]
    assert w.shape == (2, pop.data.input_dim, 48)  # (N, in, out)
    pop.step(pop.batch_indices()[:, 0])
    assert all(p.grad.is_contiguous() and p.grad.stride() == p.stride() for p in pop.net.params.values())
    assert pop.net.slot_state(1)["encoder.0.weight"].shape == (48, pop.data.input_dim)


def test_a_checkpoint_of_the_old_weight_layout_is_refused_in_one_line(tmp_path, small_xmedia):
    from scalable_xmr.store import torchfile

    pop = PopulationTrainer(_job(tmp_path, small_xmedia, BASE), CONFIGS[:2])
    pop.save_checkpoint()
    path = pop.store.checkpoint_path("image")
    state = torchfile.load(path)
    del state["layout"]  # as written before weights were stored (N, in, out)
    torchfile.save(state, path)
    with pytest.raises(InputError, match=r"written by an older version \(weights stored \(N, out, in\)"):
        PopulationTrainer(_job(tmp_path, small_xmedia, BASE), CONFIGS[:2])


def test_patience_masks_each_member_on_its_own(tmp_path, small_xmedia, one_torch_thread):
    """Per-slot early stopping: a slot whose patience runs out keeps its record from then on
    (history, selection, epochs), the others train on; the population ends when all are done."""
    losses = [[3.0, 2.0, 2.5, 2.0, 2.1, 2.2, 2.3, 2.4],   # best 2: stops at 4 (patience 2)
              [3.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5],   # improves every epoch: runs all 8
              [3.0, 2.0, 1.0, 1.5, 1.6, 0.2, 0.3, 0.4]]   # best 3: stops at 5
    configs = [dataclasses.replace(c, epochs=8, patience=2, checkpoint_every=100) for c in CONFIGS]
    pop = PopulationTrainer(_job(tmp_path / "pop", small_xmedia, configs[0]), configs)
    real = pop.val_label_loss

    def crafted():
        real()
        return torch.tensor([row[pop.epoch - 1] for row in losses])

    pop.val_label_loss = crafted
    out_dirs = [tmp_path / f"out{i}" for i in range(3)]
    pop.fit(out_dirs=out_dirs)
    assert pop.epoch == 8 and pop.done
    assert [m.stopped_early for m in pop.slots] == [4, None, 5]
    assert [len(m.history) for m in pop.slots] == [4, 8, 5]
    assert [m.best_epoch for m in pop.slots] == [2, 8, 3]  # slot 2's 0.2 at epoch 6 came too late
    import json

    logs = [json.loads(RunStore(d).train_log_path("image").read_text()) for d in out_dirs]
    assert [(log["epochs"], log["stopped_early"], log["patience"]) for log in logs] == [
        (4, 4, 2), (8, None, 2), (5, 5, 2)]
    # A resumed population (checkpoint of its last epoch) restores each slot's stop.
    again = PopulationTrainer(_job(tmp_path / "pop", small_xmedia, configs[0]), configs)
    assert [m.stopped_early for m in again.slots] == [4, None, 5] and again.done


def test_a_population_whose_members_all_stop_ends_early(tmp_path, small_xmedia, one_torch_thread):
    configs = [dataclasses.replace(c, epochs=8, patience=1, checkpoint_every=100) for c in CONFIGS[:2]]
    pop = PopulationTrainer(_job(tmp_path / "pop", small_xmedia, configs[0]), configs)
    real = pop.val_label_loss
    pop.val_label_loss = lambda: (real(), torch.tensor([1.0, 1.0]))[1]  # never better than epoch 1
    pop.fit()
    assert pop.epoch == 2 and [m.stopped_early for m in pop.slots] == [2, 2]
