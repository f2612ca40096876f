"""The one-model trainer: registry, chunked scoring, model selection, checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.scoring import PairTensors, similarity_matrix, text_similarity_matrix
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.data.paired import make_synthetic_pairs, open_paired_dataset, write_paired_dataset
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.models.base import BranchModel
from scalable_xmr.models.mtfn import MTFN, MTFNConfig
from scalable_xmr.models.registry import branch_config, build_branch_model
from scalable_xmr.models.vse import VSE, VSEConfig

SMALL_VSE = VSEConfig(embed_dim=16, word_dim=8)
SMALL_MTFN = MTFNConfig(rank=2, dim=8, word_dim=8, text_hidden=8, dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = make_synthetic_pairs(
        tmp_path_factory.mktemp("d") / "syn",
        seed=1,
        n_train=30,
        n_val=7,
        n_test=0,
        n_regions=3,
        dim=8,
        vocab_size=40,
        n_concepts=6,
    )
    ds = open_paired_dataset(root)
    return ds.read_split("train"), ds.read_split("val")


@pytest.mark.parametrize(
    "values, match",
    [
        ({"model": "clip"}, "unknown branch model 'clip'"),
        ({"model": "vse", "epochs": -1}, "epochs"),
        ({"model": "vse", "batch_size": 1}, "batch_size"),
        ({"model": "vse", "lr": 0.0}, "lr"),
        ({"model": "vse", "margin": 0.2}, "unknown key 'margin'"),  # the model config's (one owner)
        ({"model": "vse", "grad_clip": float("inf")}, "grad_clip"),
        ({"model": "vse", "hinge": "max"}, "unknown key 'hinge'"),
        ({"model": "vse", "text_input": "words"}, "text_input"),
        ({"model": "vse", "epoch": 3}, "unknown key 'epoch'"),
        ({"epochs": 3}, "missing key 'model'"),
    ],
)
def test_config_rejects_bad_values(values, match):
    with pytest.raises(InputError, match=match):
        PairTrainerConfig.from_dict(values)


def test_registry():
    assert isinstance(build_branch_model("vse", SMALL_VSE, vocab_size=10, image_dim=4), VSE)
    assert isinstance(build_branch_model("mtfn", None, vocab_size=10, image_dim=4), MTFN)
    assert branch_config("mtfn", {"rank": 3}).rank == 3
    with pytest.raises(InputError, match="unknown key 'rnak'"):
        branch_config("mtfn", {"rnak": 3})
    with pytest.raises(InputError, match="needs a MTFNConfig"):
        build_branch_model("mtfn", SMALL_VSE, vocab_size=10, image_dim=4)
    with pytest.raises(InputError, match="unknown branch model"):
        build_branch_model("scan", None, 10, 4)
    with pytest.raises(InputError, match="image_dim"):
        build_branch_model("vse", None, 10, 0)
    for name in ("mmca", "vsa"):  # imported lazily from the other helpers' modules
        model = build_branch_model(name, None, vocab_size=10, image_dim=4, text_dim=5)
        assert model.name == name


@pytest.mark.parametrize("name, cfg", [("vse", SMALL_VSE), ("mtfn", SMALL_MTFN)])
def test_similarity_matrix_chunked_equals_direct(splits, name, cfg):
    _, val = splits
    torch.manual_seed(0)
    model = build_branch_model(name, cfg, vocab_size=val.vocab_size, image_dim=val.image_dim)
    model.train()  # scoring must switch dropout off and restore the mode afterwards
    small = similarity_matrix(model, val, chunk=4)
    big = similarity_matrix(model, val, chunk=1000)
    assert model.training and small.shape == (7, 35)
    torch.testing.assert_close(small, big)
    model.eval()
    with torch.no_grad():  # independent: one pair at a time
        data = PairTensors.from_split(val)
        for i in (0, 6):
            for j in (0, 17, 34):
                img = model.encode_images(data.images[i : i + 1])
                txt = model.encode_texts(data.texts[j : j + 1], data.lengths[j : j + 1])
                # the matrix holds the ranking scores (MTFN: logits W_m f, VSE: its cosine)
                assert float(model.ranking_scores(img, txt)) == pytest.approx(float(small[i, j]), abs=1e-5)


def test_text_similarity_matrix(splits):
    _, val = splits
    model = build_branch_model("mtfn", SMALL_MTFN, vocab_size=val.vocab_size, image_dim=val.image_dim)
    model.init_text_branch()
    sim = text_similarity_matrix(model, val, chunk=6)
    assert sim.shape == (35, 35)
    torch.testing.assert_close(sim, text_similarity_matrix(model, val, chunk=100))
    torch.testing.assert_close(sim, sim.T)  # symmetric right after initialisation from S_IT
    vse = build_branch_model("vse", SMALL_VSE, vocab_size=val.vocab_size, image_dim=val.image_dim)
    with pytest.raises(InputError, match="no text-text branch"):
        text_similarity_matrix(vse, val)


def _trainer(splits, epochs=3, **kw):
    cfg = PairTrainerConfig(model="vse", epochs=epochs, batch_size=16, lr=2e-3, seed=3, **kw)
    return PairTrainer(cfg, SMALL_VSE, *splits)


def test_fit_history_callback_and_best_state(splits):
    trainer = _trainer(splits, epochs=4, lr_decay_epochs=2, lr_decay=0.5)
    seen = []
    history = trainer.fit(on_epoch=lambda r: seen.append((r["epoch"], trainer.epoch)))
    assert seen == [(0, 1), (1, 2), (2, 3), (3, 4)]  # epoch already advanced in the callback
    assert [r["lr"] for r in history] == pytest.approx([2e-3, 2e-3, 1e-3, 1e-3])
    assert all(np.isfinite(r["loss"]) and "i2t@1" in r["val"] for r in history)
    best = max(history, key=lambda r: r["val_rsum"])
    assert best["is_best"] and trainer.best["image_text"]["epoch"] == best["epoch"]
    # the trainer ends on the selected epoch's weights
    assert trainer.evaluate()["rsum"] == pytest.approx(best["val_rsum"])


def test_resume_from_checkpoint_is_exact(splits, tmp_path):
    straight = _trainer(splits, epochs=4)
    straight.fit()
    first = _trainer(splits, epochs=4)
    ckpt = tmp_path / "ckpt" / "state.pt"
    first.fit(on_epoch=lambda r: first.save_checkpoint(ckpt) if r["epoch"] == 1 else None)
    resumed = _trainer(splits, epochs=4)
    resumed.load_checkpoint(ckpt)
    assert resumed.epoch == 2 and len(resumed.history) == 2
    resumed.fit()
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_mtfn_two_stage_resume(splits, tmp_path):
    cfg = PairTrainerConfig(model="mtfn", epochs=2, text_epochs=2, batch_size=8, lr=1e-3, seed=0)
    straight = PairTrainer(cfg, SMALL_MTFN, *splits)
    straight.fit()
    assert [r["stage"] for r in straight.history] == ["image_text"] * 2 + ["text_text"] * 2
    part = PairTrainer(cfg, SMALL_MTFN, *splits)
    ckpt = tmp_path / "mtfn.pt"
    part.fit(on_epoch=lambda r: part.save_checkpoint(ckpt) if r["epoch"] == 2 else None)
    resumed = PairTrainer(cfg, SMALL_MTFN, *splits)
    resumed.load_checkpoint(ckpt)
    assert resumed.stage == "text_text"
    resumed.fit()
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history])


def test_mtfn_checkpoints_hold_what_a_resume_reads_and_resume_exactly(splits, tmp_path):
    """Image-text checkpoints leave out S_TT (re-initialised from S_IT before use), text-text ones
    the frozen S_IT (kept once, as the best image-text state); a best state equal to the model is
    not stored twice. Resuming from each checkpoint ends on the same weights as training straight."""
    cfg = PairTrainerConfig(model="mtfn", epochs=2, text_epochs=2, batch_size=8, lr=1e-3, seed=0)
    straight = PairTrainer(cfg, SMALL_MTFN, *splits)
    straight.fit()
    part = PairTrainer(cfg, SMALL_MTFN, *splits)
    states = []

    def save(record):
        states.append(part.state_dict())
        part.save_checkpoint(tmp_path / f"ep{record['epoch']}.pt")

    part.fit(on_epoch=save)
    tt = {k for k in part.model.state_dict() if k.startswith("tt_")}
    it = set(part.model.state_dict()) - tt
    for state, record in zip(states, part.history, strict=True):
        own = tt if record["stage"] == "text_text" else it
        assert set(state["model"]) == own
        best = state["best"][record["stage"]]
        assert (best["model"] is None) == record["is_best"]
        if best["model"] is not None:
            assert set(best["model"]) == own
        if record["stage"] == "text_text":
            kept = state["best"]["image_text"]["model"]
            assert kept is not None and set(kept) == it
    for epoch in range(4):
        resumed = PairTrainer(cfg, SMALL_MTFN, *splits)
        resumed.load_checkpoint(tmp_path / f"ep{epoch}.pt")
        resumed.fit()
        assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
        for key, value in straight.model.state_dict().items():
            torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_checkpoint_errors(splits, tmp_path):
    trainer = _trainer(splits, epochs=1)
    with pytest.raises(MissingError, match="checkpoint not found"):
        trainer.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        trainer.load_checkpoint(tmp_path / "junk.pt")
    mtfn = PairTrainer(PairTrainerConfig(model="mtfn", epochs=1), SMALL_MTFN, *splits)
    mtfn.save_checkpoint(tmp_path / "mtfn.pt")
    with pytest.raises(InputError, match="checkpoint is for model 'mtfn'"):
        trainer.load_checkpoint(tmp_path / "mtfn.pt")


def test_a_corrupt_checkpoint_falls_back_to_the_one_before_it(splits, tmp_path):
    trainer = _trainer(splits, epochs=3)
    ckpt = tmp_path / "last.pt"
    trainer.fit(on_epoch=lambda r: trainer.save_checkpoint(ckpt))  # epochs 1, 2, 3: keeps 2 and 3
    raw = bytearray(ckpt.read_bytes())
    raw[200:264] = bytes(64)
    ckpt.write_bytes(bytes(raw))
    resumed = _trainer(splits, epochs=3)
    why = resumed.load_checkpoint(ckpt)
    assert resumed.epoch == 2 and f"{ckpt}: checksum mismatch" in why
    assert _trainer(splits, epochs=3).load_checkpoint(ckpt.parent / "last.pt.prev") is None


def test_trainer_rejects_bad_setups(splits, tmp_path):
    train, val = splits
    with pytest.raises(InputError, match="text_epochs=2: model 'vse' has no text-text branch"):
        PairTrainer(PairTrainerConfig(model="vse", text_epochs=2), SMALL_VSE, train, val)
    with pytest.raises(InputError, match="text_input='features'.*no caption features"):
        PairTrainer(PairTrainerConfig(model="vse", text_input="features"), SMALL_VSE, train, val)
    root = write_paired_dataset(
        tmp_path / "uneven",
        {"image_id": ["a", "b"], "split": ["val", "val"], "features": np.ones((2, 8), np.float32)},
        {"caption_id": ["x", "y", "z"], "image_id": ["a", "a", "b"], "tokens": [[2], [3], [4]]},
        ["<pad>", "<unk>", "p", "q", "r"],
    )
    uneven = open_paired_dataset(root).read_split("val")
    with pytest.raises(InputError, match="same number of captions"):
        PairTrainer(PairTrainerConfig(model="vse"), SMALL_VSE, train, uneven)


@pytest.mark.parametrize("name", ["mmca", "vsa"])
def test_other_branch_models_train_through_the_same_loop(splits, name):
    small = {
        "mmca": {"embed_dim": 16, "n_heads": 2, "n_filters": 8, "text_layers": 1},
        "vsa": {"embed_dim": 16, "word_dim": 8, "conv_channels": (8, 16), "max_len": 16},
    }
    cfg = PairTrainerConfig(model=name, epochs=1, batch_size=16, lr=1e-3)
    history = PairTrainer(cfg, branch_config(name, small[name]), *splits).fit()
    assert np.isfinite(history[0]["loss"]) and "rsum" in history[0]["val"]


class _RaggedTexts(BranchModel):
    """Text representations whose width is the longest caption of the chunk (like word features)."""

    name = "ragged"

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode_images(self, images):
        return self.scale * images.reshape(len(images), -1).sum(1)  # (B,)

    def encode_texts(self, tokens, lengths):
        words = tokens[:, : int(lengths.max())].float()  # (B, T_chunk)
        return words.sum(1), words

    def similarity(self, img_repr, txt_repr):
        total, words = txt_repr
        return img_repr[:, None] * total[None, :] + words.sum(1)[None, :]  # (B_img, B_txt)


def test_similarity_matrix_pads_ragged_chunk_representations(splits):
    _, val = splits
    model = _RaggedTexts()
    chunked = similarity_matrix(model, val, chunk=3)
    data = PairTensors.from_split(val)
    img = data.images.reshape(data.n_images, -1).sum(1)
    total = data.texts.float().sum(1)
    torch.testing.assert_close(chunked, img[:, None] * total[None, :] + total[None, :])


def test_warmup_uses_the_sum_over_negatives_first(splits):
    def first_loss(warmup):
        cfg = PairTrainerConfig(model="vse", epochs=1, batch_size=16, seed=0, warmup_sum_epochs=warmup)
        return PairTrainer(cfg, SMALL_VSE, *splits).fit()[0]["loss"]

    # same data and start; 15 negatives summed per query instead of the hardest one
    assert first_loss(1) > 5 * first_loss(0)


# ---- early stopping (patience) -------------------------------------------------------------------
def _scripted(trainer: PairTrainer, scores: dict[str, list[float]]) -> None:
    """Each stage's validation score follows ``scores[stage]`` (indexed by the stage's epoch)."""
    cfg = trainer.config

    def validate(stage):
        at = trainer.epoch if stage == "image_text" else trainer.epoch - cfg.epochs
        score = scores[stage][at]
        return ({"rsum": score} if stage == "image_text" else {"tt_r1": score}), score

    trainer._validate = validate


def test_patience_stops_the_image_text_stage_at_the_rule_s_epoch(splits):
    rsums = [1.0, 2.0, 1.5, 2.0, 2.5, 2.4, 2.3, 2.2, 2.1, 2.0]  # best 2, tie at 4: stops at 4
    trainer = _trainer(splits, epochs=10, patience=2)
    _scripted(trainer, {"image_text": rsums})
    seen = []
    history = trainer.fit(on_epoch=lambda r: seen.append((r["epoch"], r.get("stopped_early"), r["last"])))
    assert len(history) == 4 and trainer.stopped_early == {"image_text": 4, "text_text": None}
    assert seen[-1] == (3, True, True) and [s[2] for s in seen] == [False, False, False, True]
    assert trainer.best["image_text"]["epoch"] == 1  # 0-based: epoch 2


def test_patience_hands_a_stopped_image_text_stage_to_mtfn_s_text_stage(splits, tmp_path):
    cfg = PairTrainerConfig(model="mtfn", epochs=6, text_epochs=3, batch_size=8, lr=1e-3, seed=0,
                            lr_decay_epochs=1, lr_decay=0.5, patience=2)
    scores = {"image_text": [1.0, 2.0, 1.5, 1.9, 3.0, 3.0], "text_text": [1.0, 0.5, 0.4]}
    trainer = PairTrainer(cfg, SMALL_MTFN, *splits)
    _scripted(trainer, scores)
    ckpt = tmp_path / "at_stop.pt"
    history = trainer.fit(on_epoch=lambda r: trainer.save_checkpoint(ckpt) if r["epoch"] == 3 else None)
    assert [(r["epoch"], r["stage"]) for r in history] == [
        (0, "image_text"), (1, "image_text"), (2, "image_text"), (3, "image_text"),
        (6, "text_text"), (7, "text_text"), (8, "text_text")]
    # the text stage keeps its own epochs and lr steps; its patience runs out only at its end
    assert [r["lr"] for r in history[4:]] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert trainer.stopped_early == {"image_text": 4, "text_text": None}
    # The checkpoint of the stop epoch resumes in the text stage, the stop remembered.
    resumed = PairTrainer(cfg, SMALL_MTFN, *splits)
    resumed.load_checkpoint(ckpt)
    assert resumed.epoch == 6 and resumed.stopped_early["image_text"] == 4
    _scripted(resumed, scores)
    assert [r["stage"] for r in resumed.fit()] == ["image_text"] * 4 + ["text_text"] * 3


def test_patience_count_survives_a_resume(splits, tmp_path):
    rsums = [1.0, 2.0, 1.5, 2.0, 2.5, 2.4]
    first = _trainer(splits, epochs=6, patience=2)
    _scripted(first, {"image_text": rsums})
    ckpt = tmp_path / "ep3.pt"  # the checkpoint of epoch 3 (best 2, one epoch without improvement)
    first.fit(on_epoch=lambda r: first.save_checkpoint(ckpt) if r["epoch"] == 2 else None)
    resumed = _trainer(splits, epochs=6, patience=2)
    resumed.load_checkpoint(ckpt)
    assert resumed.epoch == 3
    _scripted(resumed, {"image_text": rsums})
    assert len(resumed.fit()) == 4 and resumed.stopped_early["image_text"] == 4


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_patience_must_be_a_positive_whole_number(bad):
    with pytest.raises(InputError, match="patience must be a whole number of epochs >= 1"):
        PairTrainerConfig(model="vse", patience=bad)
