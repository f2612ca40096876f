"""A trial's training state is stored once (Tune's copy) and a finished sweep drops it."""

from __future__ import annotations

import json
from pathlib import Path

import ray.tune

from scalable_xmr.store import torchfile
from scalable_xmr.tuning import trial_io


def test_report_leaves_the_checkpoint_to_tune_alone(tmp_path, monkeypatch):
    ckpt = tmp_path / "trials" / "t1" / "modalities" / "audio" / "checkpoints"
    torchfile.save_rotating({"epoch": 1}, ckpt / "last.pt")
    torchfile.save_rotating({"epoch": 2}, ckpt / "last.pt")
    copied = {}

    def report(metrics, checkpoint=None):  # what Tune does: copy the directory into its storage
        if checkpoint is not None:
            copied.update({p.name: p.read_bytes() for p in Path(checkpoint.path).iterdir()})

    monkeypatch.setattr(ray.tune, "report", report)
    trial_io.report({"epoch": 2}, ckpt, {"epoch": 2})
    assert set(copied) == {"last.pt", "last.pt.prev", "trial_state.json"}
    assert json.loads(copied["trial_state.json"]) == {"epoch": 2}
    assert not ckpt.exists()  # the trial's own copy is gone once Tune holds one
    trial_io.report({"epoch": 3})  # a report without a checkpoint touches nothing
    assert not ckpt.exists()


def test_a_finished_sweep_drops_tune_s_checkpoints_and_leftovers_and_keeps_models(tmp_path):
    sweep = tmp_path / "s"
    tune_trial = sweep / "sdml_trial_abc_00000"
    for i in (2, 3):
        torchfile.save({"epoch": i}, tune_trial / f"checkpoint_00000{i}" / "last.pt")
    (tune_trial / "result.json").write_text("{}")
    left = sweep / "trials" / "abc_00001" / "modalities" / "audio"  # stopped inside its last report
    torchfile.save({"epoch": 1}, left / "checkpoints" / "last.pt")
    torchfile.save({"w": 1}, left / "model.pt")
    branch = sweep / "trials" / "abc_00002" / "checkpoints"
    torchfile.save({"epoch": 1}, branch / "last.pt")
    (branch / "job.json").write_text("{}")
    dropped = trial_io.drop_sweep_state(sweep)
    assert dropped.files == 5
    assert not list(sweep.rglob("checkpoint*")) and (tune_trial / "result.json").is_file()
    assert (left / "model.pt").is_file()
    assert trial_io.drop_sweep_state(sweep).files == 0
