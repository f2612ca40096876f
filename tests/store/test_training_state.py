"""A finished run's training state (store/training_state.py): only our checkpoint files go, by name."""

from __future__ import annotations

import pytest

from scalable_xmr.errors import InputError
from scalable_xmr.store import torchfile, training_state


def _checkpoints(d, *extra):
    torchfile.save_rotating({"epoch": 1}, d / "last.pt")
    torchfile.save_rotating({"epoch": 2}, d / "last.pt")  # last.pt.prev too
    (d / "job.json").write_text("{}")
    for name in extra:
        (d / name).write_text("x")


def test_drop_removes_our_files_and_empty_folders_only(tmp_path):
    ours, shared = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    _checkpoints(ours)
    _checkpoints(shared, "notes.txt", ".fault_injected")  # not ours: kept, and so is the folder
    loose = tmp_path / "joint_checkpoint.pt"
    torchfile.save({"epoch": 2}, loose)
    model = tmp_path / "a" / "model.pt"
    torchfile.save({"w": 1}, model)
    size = training_state.size([ours, shared], [loose])
    assert size == sum(p.stat().st_size for p in training_state.state_files([ours, shared], [loose]))
    dropped = training_state.drop([ours, shared, tmp_path / "never-made"], [loose])
    assert dropped == training_state.Dropped(7, size)
    assert not ours.exists() and not loose.exists() and model.is_file()
    assert sorted(p.name for p in shared.iterdir()) == [".fault_injected", "notes.txt"]
    assert training_state.drop([ours, shared], [loose]) == training_state.Dropped(0, 0)  # idempotent


def test_after_finish_keeps_with_the_flag_and_says_what_it_did(tmp_path):
    d = tmp_path / "checkpoints"
    _checkpoints(d)
    kept = training_state.after_finish("run", [d], keep=True, where="modalities/*/checkpoints/")
    assert kept.startswith("kept (--keep-checkpoints): ") and (d / "last.pt").is_file()
    line = training_state.after_finish("run", [d], keep=False, where="modalities/*/checkpoints/")
    assert line.startswith("removed 3 files, ") and "--keep-checkpoints keeps them" in line
    assert training_state.after_finish("run", [d], keep=False) == "none left"


def test_keep_on_a_finished_run_without_state_is_one_line(tmp_path):
    d = tmp_path / "checkpoints"
    with pytest.raises(InputError, match="--keep-checkpoints: run is finished and its training state was"):
        training_state.refuse_keep_on_finished("run", [d])
    _checkpoints(d)
    training_state.refuse_keep_on_finished("run", [d])  # a run made with the flag kept it: fine


@pytest.mark.parametrize(("n", "text"), [(800, "800 B"), (12_345, "12.3 kB"), (190_000_000, "190 MB"),
                                         (1_750_730_128, "1.75 GB")])
def test_human_size(n, text):
    assert training_state.human_size(n) == text


def test_drop_removes_a_data_parallel_modalitys_ray_train_run_whole(tmp_path):
    """A W > 1 modality's checkpoints live in Ray Train's run (checkpoints/ray-train/, with Ray's
    own files beside ours): all of it is training state; a file of another name next to it stays."""
    d = tmp_path / "checkpoints"
    run = d / training_state.RAY_TRAIN_DIR
    (run / "checkpoint_2026-12-07_12-00-00.000000").mkdir(parents=True)
    torchfile.save({"epoch": 2}, run / "checkpoint_2026-12-07_12-00-00.000000" / "last.pt")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    (run / ".validate_storage_marker").write_text("")
    assert len(training_state.state_files([d])) == 3
    size = training_state.size([d])
    assert training_state.drop([d]) == training_state.Dropped(3, size)
    assert not d.exists()
    (run / "checkpoint_x").mkdir(parents=True)
    (d / "notes.txt").write_text("x")  # not ours: the folder stays, the Ray Train run goes
    training_state.drop([d])
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
