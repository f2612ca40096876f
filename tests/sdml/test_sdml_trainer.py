"""The one-modality trainer without Ray: training, selection, checkpoints, resume, outputs."""

import numpy as np
import pytest
import torch

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.errors import CorruptFileError, InputError
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store import torchfile
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore

CFG = SDMLConfig(dim=32, hidden=64, epochs=6, batch_size=20, checkpoint_every=2, lr=1e-3)


def _job(tmp_path, data, modality="image", cfg=CFG, **kw):
    ds = open_dataset(data)
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    digest = save_projection(run / "projection.arrow", create_projection(cfg.dim, ds.info.n_classes, 0))
    return ModalitySpec(run_dir=str(run), modality=modality, config=cfg, dataset_uri=data,
                       n_classes=ds.info.n_classes, projection_sha256=digest, **kw)


def test_trains_selects_and_writes_outputs(tmp_path, small_xmedia):
    rows = []
    trainer = ModalityTrainer(_job(tmp_path, small_xmedia), progress=rows.append)
    result = trainer.fit()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert result.epochs == 6 and result.resumed_at_epoch == []
    vals = [h["loss_val_label"] for h in result.history]
    assert result.best_epoch == int(np.argmin(vals)) + 1
    assert result.best_val_label == pytest.approx(min(vals))
    assert result.history[-1]["loss_train"] < result.history[0]["loss_train"]
    store = RunStore(tmp_path / "run")
    payload = store.load_model("image")  # weights_only load
    assert payload["best_epoch"] == result.best_epoch
    # The stored model is the best epoch's: its val label loss equals the recorded best.
    trainer.model.load_state_dict(payload["state_dict"])
    assert trainer.val_label_loss() == pytest.approx(result.best_val_label, rel=1e-5)
    ids, labels, emb = store.read_embeddings("image", "test", 20)
    split = open_dataset(small_xmedia).read_split("image", "test")
    assert list(ids) == list(split.ids)
    np.testing.assert_array_equal(labels, split.labels)
    assert emb.shape == (len(split.ids), 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_resume_continues_exactly(tmp_path, small_xmedia):
    """Train 6 epochs straight vs 4 + resume 2: identical weights (RNG state checkpointed)."""
    torch.manual_seed(123)
    straight = ModalityTrainer(_job(tmp_path / "a", small_xmedia))
    straight.fit()

    four = SDMLConfig(**{**CFG.to_dict(), "epochs": 6})
    first = ModalityTrainer(_job(tmp_path / "b", small_xmedia, cfg=four))
    for _ in range(4):
        first.record(first.train_epoch())
    first.save_checkpoint()
    del first
    resumed = ModalityTrainer(_job(tmp_path / "b", small_xmedia, cfg=four))
    assert resumed.epoch == 4 and resumed.resumed_at == [4]
    result = resumed.fit()
    assert result.resumed_at_epoch == [4]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_checkpoint_from_other_config_is_refused(tmp_path, small_xmedia):
    t = ModalityTrainer(_job(tmp_path, small_xmedia))
    t.record(t.train_epoch())
    t.save_checkpoint()
    other = SDMLConfig(**{**CFG.to_dict(), "lam": 0.9})
    with pytest.raises(ValueError, match="checkpoint was written with another config"):
        ModalityTrainer(_job(tmp_path, small_xmedia, cfg=other))


def test_a_bit_flipped_checkpoint_is_named_and_the_one_before_it_used(tmp_path, small_xmedia):
    """64 bytes overwritten in last.pt (it was loaded silently: 20 epochs of NaN loss). Now the
    file is named and training resumes from the checkpoint before it, and says so."""
    t = ModalityTrainer(_job(tmp_path, small_xmedia))
    for _ in range(4):
        t.record(t.train_epoch())
        if t.epoch % 2 == 0:
            t.save_checkpoint()  # epoch 2 -> last.pt.prev, epoch 4 -> last.pt
    path = RunStore(tmp_path / "run").checkpoint_path("image")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    resumed = ModalityTrainer(_job(tmp_path, small_xmedia))
    assert resumed.epoch == 2 and resumed.resumed_at == [2]
    assert f"{path}: checksum mismatch" in resumed.recovered_from
    result = resumed.fit()
    assert result.epochs == CFG.epochs and all(np.isfinite(h["loss_train"]) for h in result.history)
    path.write_bytes(bytes(raw))  # both damaged: one line naming the newest file
    raw_prev = bytearray(torchfile.previous(path).read_bytes())
    raw_prev[100:164] = bytes(64)
    torchfile.previous(path).write_bytes(bytes(raw_prev))
    with pytest.raises(CorruptFileError, match=rf"{path}: checksum mismatch"):
        ModalityTrainer(_job(tmp_path, small_xmedia))


def test_a_non_finite_loss_stops_the_modality_naming_epoch_and_term(tmp_path, small_xmedia):
    t = ModalityTrainer(_job(tmp_path, small_xmedia))
    with torch.no_grad():
        t.model.decoder[-1].weight.fill_(float("nan"))  # the reconstruction goes NaN
    with pytest.raises(InputError, match="modality 'image': the reconstruction (and label losses are|loss "
                                         "is) not finite at epoch 1"):
        t.fit()
    assert not RunStore(tmp_path / "run").checkpoint_path("image").exists()  # no NaN checkpoint


def test_wrong_projection_checksum_refused(tmp_path, small_xmedia):
    job = _job(tmp_path, small_xmedia)
    bad = ModalitySpec(**{**vars(job), "projection_sha256": "0" * 64})
    with pytest.raises(ValueError, match="checksum check failed"):
        ModalityTrainer(bad)


# The SDML authors' reference code: Adam at 1e-4 for the image network, 2e-4 for text, audio, 3d
# and video (docs/models.md). By name: a dataset without "image" trains everything at 2e-4.
REFERENCE_LR = {"image": 1e-4, "text": 2e-4, "audio": 2e-4, "3d": 2e-4, "video": 2e-4, "fou": 2e-4}


def test_per_modality_learning_rate_follows_the_reference_code():
    from scalable_xmr.config import ModalityOverrides

    base = SDMLConfig()
    assert base.lr is None
    for modality, lr in REFERENCE_LR.items():
        assert base.lr_for(modality) == lr
        assert ModalityOverrides().config_for(base, modality).lr == lr  # what run.json records
    overrides = ModalityOverrides({"text": {"lr": 5e-4}})
    assert overrides.config_for(base, "text").lr == 5e-4  # an explicit rate wins
    assert overrides.config_for(SDMLConfig(lr=3e-3), "image").lr == 3e-3
    with pytest.raises(TypeError, match="modality name"):
        base.lr_for(4096)  # the rule is no longer by input dim


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_the_trainer_uses_the_resolved_rate(tmp_path, small_xmedia, modality):
    cfg = SDMLConfig(**{**CFG.to_dict(), "lr": None})
    trainer = ModalityTrainer(_job(tmp_path, small_xmedia, modality=modality, cfg=cfg))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [REFERENCE_LR[modality]]


def test_a_sweep_trial_job_never_reads_the_test_split(tmp_path, small_xmedia):
    trainer = ModalityTrainer(_job(tmp_path, small_xmedia, modality="audio", eval_splits=("val",)))
    assert sorted(trainer.data.features) == ["train", "val"]
    trainer.fit()
    store = RunStore(tmp_path / "run")
    assert store.model_path("audio").is_file() and store.embeddings_path("audio", "val").is_file()
    assert not store.embeddings_path("audio", "test").exists()
    with pytest.raises(ValueError, match="eval_splits must be"):
        _job(tmp_path, small_xmedia, eval_splits=("test",))


def test_reuse_data_reads_the_table_once_per_process(tmp_path, small_xmedia, monkeypatch):
    from scalable_xmr.data.modality import cache
    from scalable_xmr.data.modality.dataset import Dataset

    reads = []
    real = Dataset.read_split
    monkeypatch.setattr(Dataset, "read_split", lambda self, m, s: reads.append((m, s)) or real(self, m, s))
    cache.clear()
    try:
        cfg = SDMLConfig(dim=32, hidden=64, epochs=1, batch_size=20)
        job = _job(tmp_path, small_xmedia, cfg=cfg, eval_splits=("val",), reuse_data=True)
        a, b = ModalityTrainer(job), ModalityTrainer(job)
        assert reads == [("image", "train"), ("image", "val")]  # the second trainer read nothing
        assert a.data.features["train"].data_ptr() == b.data.features["train"].data_ptr()
        before = a.data.features["train"].clone()
        a.fit()
        b.fit()
        assert torch.equal(b.data.features["train"], before)  # training never writes into them
        ModalityTrainer(_job(tmp_path, small_xmedia, cfg=cfg, eval_splits=("val",)))  # no reuse
        assert len(reads) == 4
    finally:
        cache.clear()


def test_no_checkpoint_at_end_when_asked(tmp_path, small_xmedia):
    cfg = SDMLConfig(dim=32, hidden=64, epochs=3, batch_size=20, checkpoint_every=2)
    seen = []
    trainer = ModalityTrainer(_job(tmp_path, small_xmedia, cfg=cfg))
    trainer.fit(lambda stats, checkpointed: seen.append((stats.epoch, checkpointed)), checkpoint_at_end=False)
    assert seen == [(1, False), (2, True), (3, False)]
    state = torchfile.load(RunStore(tmp_path / "run").checkpoint_path("image"))
    assert state["epoch"] == 2


# ---- early stopping (--patience) ------------------------------------------------------------------
# Validation label losses per epoch: best at 2, 4 ties it (no improvement), 5 improves.
VAL_LOSSES = [3.0, 2.0, 2.5, 2.0, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]


@pytest.mark.parametrize(("patience", "stop"), [(1, 3), (2, 4), (3, 8), (4, 9), (5, None), (9, None)])
def test_patience_rule_on_a_crafted_sequence(patience, stop):
    from scalable_xmr.config import patience_exhausted, patience_stop

    assert patience_stop(VAL_LOSSES, patience, higher_is_better=False) == stop
    # the same sequence as rsum (higher is better): negate it
    assert patience_stop([-v for v in VAL_LOSSES], patience, higher_is_better=True) == stop
    assert not patience_exhausted(10, 1, None)  # off
    assert patience_exhausted(21, 1, 20) and not patience_exhausted(20, 1, 20)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "2"])
def test_patience_must_be_a_positive_whole_number(bad):
    with pytest.raises(InputError, match="patience must be a whole number of epochs >= 1"):
        SDMLConfig(patience=bad)


def _crafted(trainer: ModalityTrainer, losses: list[float]) -> None:
    """Make ``trainer``'s validation losses follow ``losses`` (training itself runs as usual)."""
    real = trainer.val_label_loss
    trainer.val_label_loss = lambda: (real(), losses[trainer.epoch - 1])[1]


@pytest.mark.parametrize(("patience", "stop"), [(2, 4), (3, 8)])
def test_patience_stops_the_trainer_at_the_rule_s_epoch_and_resume_keeps_the_count(
        tmp_path, small_xmedia, patience, stop):
    cfg = SDMLConfig(**{**CFG.to_dict(), "epochs": len(VAL_LOSSES), "patience": patience,
                        "checkpoint_every": 100})
    trainer = ModalityTrainer(_job(tmp_path, small_xmedia, cfg=cfg))
    _crafted(trainer, VAL_LOSSES)
    result = trainer.fit()
    assert (result.epochs, result.stopped_early, result.planned_epochs) == (stop, stop, len(VAL_LOSSES))
    assert result.best_epoch == (2 if stop == 4 else 5)
    assert [h["epoch"] for h in result.history] == list(range(1, stop + 1))
    log = RunStore(tmp_path / "run").train_log_path("image").read_text()
    assert f'"stopped_early": {stop}' in log and f'"patience": {patience}' in log
    assert result.footer_note() == (f"image: stopped early at epoch {stop} of 10 (best epoch "
                                    f"{result.best_epoch}, --patience {patience})")
    # The stop epoch was checkpointed (the end of training): a restarted actor trains nothing more.
    again = ModalityTrainer(_job(tmp_path, small_xmedia, cfg=cfg))
    assert again.epoch == stop and again.done and again.stopped_early == stop


def test_patience_survives_a_resume_from_an_earlier_checkpoint(tmp_path, small_xmedia):
    """Checkpointed at epoch 3 (best 2): the counter is epoch - best epoch, both in the checkpoint,
    so the resumed trainer stops at epoch 4 as an uninterrupted one does."""
    cfg = SDMLConfig(**{**CFG.to_dict(), "epochs": len(VAL_LOSSES), "patience": 2, "checkpoint_every": 100})
    first = ModalityTrainer(_job(tmp_path, small_xmedia, cfg=cfg))
    _crafted(first, VAL_LOSSES)
    for _ in range(3):
        first.record(first.train_epoch())
    first.save_checkpoint()
    resumed = ModalityTrainer(_job(tmp_path, small_xmedia, cfg=cfg))
    assert (resumed.epoch, resumed.best_epoch, resumed.done) == (3, 2, False)
    _crafted(resumed, VAL_LOSSES)
    result = resumed.fit()
    assert (result.epochs, result.stopped_early, result.resumed_at_epoch) == (4, 4, [3])


def test_a_checkpoint_from_before_patience_existed_resumes(tmp_path, small_xmedia):
    """A checkpoint whose config has no ``patience`` key (written before the field) is continued."""
    t = ModalityTrainer(_job(tmp_path, small_xmedia))
    t.record(t.train_epoch())
    t.save_checkpoint()
    path = RunStore(tmp_path / "run").checkpoint_path("image")
    state = torchfile.load(path)
    del state["config"]["patience"]
    torchfile.save(state, path)
    assert ModalityTrainer(_job(tmp_path, small_xmedia)).resumed_at == [1]


def test_footer_hints_at_patience_when_the_best_epoch_came_early():
    from scalable_xmr.sdml.trainer import TrainResult

    history = [{"epoch": e, "loss_val_label": 1.0 if e == 1 else 2.0} for e in range(1, 201)]
    late = [{"epoch": e, "loss_val_label": 100.0 - e} for e in range(1, 201)]
    hint = TrainResult("image", 1, 1.0, 200, history=history, planned_epochs=200).footer_note()
    assert hint == "image: best epoch 1 of 200; --patience 20 would have stopped at epoch 21"
    assert TrainResult("image", 200, 1.0, 200, history=late, planned_epochs=200).footer_note() is None
