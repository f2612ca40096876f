"""SDML-1 (joint): every network in one loop equals training each alone (SDML Table 6's baseline)."""

from __future__ import annotations

import pytest
import torch

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.sdml.joint import JointTrainer
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore

CFG = SDMLConfig(dim=24, hidden=32, epochs=3, batch_size=25, checkpoint_every=3, lr=1e-3)


def jobs(run, data, modalities):
    run.mkdir(parents=True)
    n_classes = open_dataset(data).info.n_classes
    digest = save_projection(run / "projection.arrow", create_projection(CFG.dim, n_classes, 0))
    return [ModalitySpec(run_dir=str(run), modality=m, config=CFG, dataset_uri=data, n_classes=n_classes,
                        projection_sha256=digest, num_threads=1) for m in modalities]


def test_joint_equals_separate_trainings(tmp_path, small_xmedia, one_torch_thread):
    """The summed loss gives each network only its own gradient and Adam is per parameter, so
    one joint loop (image: 4 batches an epoch, audio: 4, 3d: 4) trains every network exactly as
    its own loop would -- the reason SDML-1 differs from SDML-2/3 in scheduling only."""
    modalities = ("image", "audio", "3d")
    joint = JointTrainer(jobs(tmp_path / "joint", small_xmedia, modalities)).fit()
    for job in jobs(tmp_path / "alone", small_xmedia, modalities):
        alone = ModalityTrainer(job).fit()
        together = joint[job.modality]
        assert together.epochs == alone.epochs == CFG.epochs
        assert [h["loss_train"] for h in together.history] == pytest.approx(
            [h["loss_train"] for h in alone.history], rel=1e-5)
        a = RunStore(tmp_path / "joint").load_model(job.modality)["state_dict"]
        b = RunStore(tmp_path / "alone").load_model(job.modality)["state_dict"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_joint_patience_stops_each_modality_on_its_own(tmp_path, small_xmedia, one_torch_thread):
    """A modality whose patience runs out adds no more loss (its network takes no more Adam steps)
    while the others train on: the joint loop stops each one where the parallel strategy would."""
    cfg = SDMLConfig(**{**CFG.to_dict(), "epochs": 6, "patience": 2, "checkpoint_every": 100})
    js = [ModalitySpec(**{**vars(j), "config": cfg})
          for j in jobs(tmp_path / "j", small_xmedia, ("image", "audio"))]
    joint = JointTrainer(js)
    losses = {"image": [3.0, 2.0, 2.5, 2.4, 1.0, 1.0], "audio": [3.0, 2.9, 2.8, 2.7, 2.6, 2.5]}
    for t in joint.trainers:
        real = t.val_label_loss
        t.val_label_loss = (lambda t=t, real=real: (real(), losses[t.job.modality][t.epoch - 1])[1])
    results = joint.fit()
    assert (results["image"].epochs, results["image"].stopped_early) == (4, 4)
    assert (results["audio"].epochs, results["audio"].stopped_early) == (6, None)
    assert len(results["image"].history) == 4 and len(results["audio"].history) == 6
    for t, epochs in zip(joint.trainers, (4, 6), strict=True):  # Adam steps: its epochs' batches only
        steps = epochs * (len(t.x["train"]) // cfg.batch_size)
        assert all(int(joint.optimizer.state[p]["step"]) == steps for p in t.model.parameters())
    again = ModalityTrainer(js[0])  # its stop epoch was checkpointed: a restart trains nothing more
    assert again.done and again.stopped_early == 4
