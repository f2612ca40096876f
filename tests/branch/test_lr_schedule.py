"""A branch model's lr schedule compressed into a shorter training (sweep trials), and the trainer
following it. Every expected rate below is written out by hand from the rule in docs/models.md:
the k-th step of the full schedule, at epoch s, moves to round(s x T / E) rounded half up, at least
1; a step landing on or after the end of its stage does not happen."""

from __future__ import annotations

import pytest

from scalable_xmr.branch.config import PairTrainerConfig, compressed, split_values
from scalable_xmr.errors import InputError

# (model, trial epochs) -> Adam's rate in each epoch of the trial, by hand. The full schedules
# (docs/models.md): vse 30 epochs 2e-4 x0.1 after 15; mtfn 50 epochs 1e-4 x0.5 every 10 (steps at
# 10, 20, 30, 40); mmca 20 epochs 2e-4 x0.1 after 10; vsa 40 epochs 2e-4 x0.1 after 20.
COMPRESSED = {
    # 15 x 10/30 = 5
    ("vse", 10): [2e-4] * 5 + [2e-5] * 5,
    # 10, 20, 30, 40 x 10/50 = 2, 4, 6, 8
    ("mtfn", 10): [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5, 1.25e-5, 1.25e-5, 6.25e-6, 6.25e-6],
    # 10 x 10/20 = 5
    ("mmca", 10): [2e-4] * 5 + [2e-5] * 5,
    # 20 x 10/40 = 5
    ("vsa", 10): [2e-4] * 5 + [2e-5] * 5,
    # 15 x 7/30 = 3.5 -> 4 (half up)
    ("vse", 7): [2e-4] * 4 + [2e-5] * 3,
    # 15 x 5/30 = 2.5 -> 3 (half up; round-half-even would give 2)
    ("vse", 5): [2e-4] * 3 + [2e-5] * 2,
    # 10, 20, 30, 40 x 7/50 = 1.4, 2.8, 4.2, 5.6 -> 1, 3, 4, 6: still four steps, as in 50 epochs
    ("mtfn", 7): [1e-4, 5e-5, 5e-5, 2.5e-5, 1.25e-5, 1.25e-5, 6.25e-6],
    # x 3/50 = 0.6, 1.2, 1.8, 2.4 -> 1, 1, 2, 2
    ("mtfn", 3): [1e-4, 2.5e-5, 6.25e-6],
    # 10 x 3/20 = 1.5 -> 2
    ("mmca", 3): [2e-4, 2e-4, 2e-5],
    # 20 x 1/40 = 0.5 -> 1: the end of a 1-epoch trial, so no step
    ("vsa", 1): [2e-4],
    # 20 x 13/40 = 6.5 -> 7
    ("vsa", 13): [2e-4] * 7 + [2e-5] * 6,
}


@pytest.mark.parametrize("model, epochs", sorted(COMPRESSED))
def test_compressed_lr_per_epoch_by_hand(model, epochs):
    trial = compressed(PairTrainerConfig(model=model), epochs)
    assert trial.epochs == epochs
    assert [trial.lr_at(e) for e in range(epochs)] == pytest.approx(COMPRESSED[model, epochs], rel=1e-12)


def test_mtfn_text_stage_is_compressed_by_the_same_factor():
    # A 10-epoch MTFN trial has 5 text-text epochs (half, default_text_epochs); the final training
    # 25, stepping at 10 and 20. 10 x 10/50 = 2 and 20 x 10/50 = 4.
    trial = compressed(PairTrainerConfig(model="mtfn", text_epochs=5), 10)
    assert [trial.lr_at(e) for e in range(5)] == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5], rel=1e-12)


# Today's rule, written independently: lr x decay ** (epoch // decay epochs).
FULL = {"vse": (30, 2e-4, 15, 0.1), "mtfn": (50, 1e-4, 10, 0.5), "mmca": (20, 2e-4, 10, 0.1),
        "vsa": (40, 2e-4, 20, 0.1)}


@pytest.mark.parametrize("model", sorted(FULL))
def test_the_full_length_is_todays_schedule(model):
    epochs, lr, every, decay = FULL[model]
    cfg = PairTrainerConfig(model=model)
    assert compressed(cfg, epochs) == cfg and cfg.lr_schedule_epochs == 0
    for e in range(epochs):
        assert cfg.lr_at(e) == lr * decay ** (e // every)  # exactly: same product as before
    longer = compressed(cfg, 2 * epochs)  # longer than the schedule: not compressed, steps repeat
    assert longer.lr_schedule_epochs == 0
    assert [longer.lr_at(e) for e in range(2 * epochs)] == [lr * decay ** (e // every)
                                                            for e in range(2 * epochs)]


def test_a_swept_lr_and_a_set_decay_are_compressed_too():
    # lr 1e-3 (a trial's sampled value): the steps multiply it.
    swept = compressed(PairTrainerConfig(model="vse", lr=1e-3), 4)  # 15 x 4/30 = 2
    assert [swept.lr_at(e) for e in range(4)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4], rel=1e-12)
    # --set lr_decay_epochs=5 on vse: 30 epochs step at 5, 10, 15, 20, 25;
    # x 10/30 = 1.67, 3.33, 5, 6.67, 8.33 -> 2, 3, 5, 7, 8.
    trial = compressed(PairTrainerConfig(model="vse", lr_decay_epochs=5), 10)
    assert trial.lr_steps(10) == [2, 3, 5, 7, 8]
    assert trial.describe_lr() == ("lr ×0.1 after epochs 2, 3, 5, 7, 8 of 10 "
                                   "(full schedule compressed: every 5 of 30 epochs)")
    # decay off: nothing to compress
    assert compressed(PairTrainerConfig(model="mmca", lr_decay_epochs=0), 5).lr_at(4) == 2e-4


@pytest.mark.parametrize("cfg, text", [
    (compressed(PairTrainerConfig(model="vse"), 10),
     "lr ×0.1 after 5 of 10 epochs (full schedule compressed: after 15 of 30 epochs)"),
    (compressed(PairTrainerConfig(model="mtfn", text_epochs=5), 10),
     "lr ×0.5 every 2 of 10 epochs (full schedule compressed: every 10 of 50 epochs); "
     "text-text: lr ×0.5 every 2 of 5 epochs"),
    (compressed(PairTrainerConfig(model="mtfn", text_epochs=1), 3),
     "lr ×0.5 after epochs 1 (2 steps), 2 (2 steps) of 3 (full schedule compressed: every 10 of 50 "
     "epochs); text-text: lr constant over 1 epoch"),
    (PairTrainerConfig(model="mmca"), "lr ×0.1 after 10 of 20 epochs (full schedule)"),
    (PairTrainerConfig(model="vsa", epochs=60), "lr ×0.1 every 20 of 60 epochs (not compressed; vsa's "
     "schedule has 40 epochs)"),
    (PairTrainerConfig(model="vse", epochs=10),  # train-pairs --epochs 10: not a sweep, not compressed
     "lr constant over 10 epochs (not compressed; vse's schedule has 30 epochs)"),
])
def test_describe_lr(cfg, text):
    assert cfg.describe_lr() == text


def test_compression_is_the_sweeps_alone():
    with pytest.raises(InputError, match="lr_schedule_epochs=5: a schedule is compressed into fewer "
                       "epochs, not 10"):
        PairTrainerConfig(model="vse", epochs=10, lr_schedule_epochs=5)
    with pytest.raises(InputError, match="lr_schedule_epochs: must be an integer >= 0"):
        PairTrainerConfig(model="vse", lr_schedule_epochs=-1)
    # not a key a user, --set or a best.json may give
    with pytest.raises(InputError, match="--set lr_schedule_epochs: not a config key of vse"):
        split_values("vse", {"lr_schedule_epochs": 30}, "--set")
    again = compressed(compressed(PairTrainerConfig(model="vse"), 10), 5)  # from the full 30, not 10
    assert again.lr_schedule_epochs == 30 and again.lr_steps(5) == [3]


# ------------------------------------------------------------------------- the trainer follows it
@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from scalable_xmr.data.paired import make_synthetic_pairs, open_paired_dataset

    root = make_synthetic_pairs(tmp_path_factory.mktemp("d") / "syn", seed=1, n_train=30, n_val=7,
                                n_test=0, n_regions=3, dim=8, vocab_size=40, n_concepts=6)
    ds = open_paired_dataset(root)
    return ds.read_split("train"), ds.read_split("val")


@pytest.mark.usefixtures("one_torch_thread")
def test_the_trainer_runs_the_compressed_schedule_in_both_stages(splits):
    from scalable_xmr.branch.trainer import PairTrainer
    from scalable_xmr.models.mtfn import MTFNConfig

    # Full: 8 image-text epochs, x0.5 every 2 (steps at 2, 4, 6). Compressed to 4: 1, 2, 3.
    # Text-text stage of 2 epochs, same factor 4/8: its step at 2 -> 1.
    full = PairTrainerConfig(model="mtfn", epochs=8, text_epochs=2, batch_size=8, lr=1e-3,
                             lr_decay_epochs=2, lr_decay=0.5)
    cfg = compressed(full, 4)
    trainer = PairTrainer(cfg, MTFNConfig(rank=2, dim=8, word_dim=8, text_hidden=8), *splits)
    history = trainer.fit()
    assert [r["stage"] for r in history] == ["image_text"] * 4 + ["text_text"] * 2
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4, 1e-3, 5e-4], rel=1e-12)


def test_a_trainer_stored_before_the_field_existed_compares_equal():
    """run.json / checkpoints/job.json of a run started before lr_schedule_epochs existed: filled
    with the field's default, it equals today's settings, so the run resumes."""
    from dataclasses import asdict

    from scalable_xmr.branch.config import PairTrainerConfig, stored_trainer

    today = asdict(PairTrainerConfig("vse", epochs=30))
    old = {k: v for k, v in today.items() if k != "lr_schedule_epochs"}
    assert old != today and stored_trainer(old) == today
    assert stored_trainer({**old, "lr_schedule_epochs": 30}) != today  # a real difference still shows
