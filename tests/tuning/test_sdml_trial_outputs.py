"""What an SDML sweep trial writes, without Ray (Tune's calls stubbed): the selected epoch's model
once at the end under FIFO, after every change when a scheduler may stop the trial early (a
stopped trial still has the model it reported), no checkpoint of its last epoch, and a worker's
data read once for all its trials."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalable_xmr.data.modality import cache
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.store.projection import create_projection, save_projection
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tuning import trial_io
from scalable_xmr.tuning.population_trial import sdml_population_trial
from scalable_xmr.tuning.results import MEMBERS_KEY, slot_id
from scalable_xmr.tuning.sdml_trial import SDMLTrialSetup, sdml_trial

BASE = {"dim": 32, "hidden": 64, "batch_size": 20, "epochs": 4, "checkpoint_every": 5}


class StoppedByScheduler(SystemExit):
    """What Tune's report raises in the trial thread when the scheduler ends the trial."""


@pytest.fixture
def tune_stub(monkeypatch):
    """trial_io's Tune calls replaced: reports recorded (with their checkpoint directories), an
    optional epoch after whose report the trial is stopped as ASHA stops it."""
    state = {"reports": [], "stop_after": None, "trial": "t0"}

    def report(metrics, checkpoint_dir=None, saved=None):
        state["reports"].append((metrics, checkpoint_dir))
        if metrics["epoch"] == state["stop_after"]:
            raise StoppedByScheduler(0)

    monkeypatch.setattr(trial_io, "current_trial_id", lambda: state["trial"])
    monkeypatch.setattr(trial_io, "install_tune_checkpoint", lambda directory: None)
    monkeypatch.setattr(trial_io, "report", report)
    cache.clear()
    yield state
    cache.clear()


@pytest.fixture
def saves(monkeypatch):
    """(modality dir, best_epoch) of every model.pt written."""
    calls = []
    real = RunStore.save_model

    def save_model(self, modality, payload):
        calls.append((self.modality_dir(modality), payload["best_epoch"]))
        real(self, modality, payload)

    monkeypatch.setattr(RunStore, "save_model", save_model)
    return calls


def _setup(tmp_path: Path, data: str, save_each_selected: bool) -> SDMLTrialSetup:
    ds = open_dataset(data, validate=False)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    digest = save_projection(sweep / "projection.arrow", create_projection(BASE["dim"], ds.info.n_classes, 0))
    return SDMLTrialSetup(str(sweep), data, ds.info.n_classes, digest, BASE, device="cpu",
                          save_each_selected=save_each_selected)


def _stored_best_epoch(directory: Path, modality: str) -> int:
    store = RunStore(directory)
    assert store.embeddings_path(modality, "val").is_file()
    return store.load_model(modality)["best_epoch"]


def test_fifo_trial_writes_its_model_once_and_no_final_checkpoint(tmp_path, small_xmedia, tune_stub,
                                                                  saves, one_torch_thread):
    setup = _setup(tmp_path, small_xmedia, save_each_selected=False)
    sdml_trial({"modality": "audio", "lam": 0.5, "lr": 1e-3}, setup)
    reports = tune_stub["reports"]
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3, 4]
    assert all(ckpt is None for _, ckpt in reports)  # checkpoint_every 5 > 4 epochs, none at the end
    directory = trial_io.trial_dir(setup.sweep_dir, "t0")
    assert len(saves) == 1 and _stored_best_epoch(directory, "audio") == reports[-1][0]["best_epoch"]
    assert not RunStore(directory).checkpoint_path("audio").exists()


def test_a_trial_stopped_early_keeps_the_model_it_reported(tmp_path, small_xmedia, tune_stub, saves,
                                                            one_torch_thread):
    setup = _setup(tmp_path, small_xmedia, save_each_selected=True)
    tune_stub["stop_after"] = 2
    with pytest.raises(StoppedByScheduler):
        sdml_trial({"modality": "audio", "lam": 0.5, "lr": 1e-3}, setup)
    last = tune_stub["reports"][-1][0]
    assert last["epoch"] == 2 and saves  # written when the selected epoch changed, before reporting
    assert _stored_best_epoch(trial_io.trial_dir(setup.sweep_dir, "t0"), "audio") == last["best_epoch"]


def test_population_members_follow_the_same_rules(tmp_path, small_xmedia, tune_stub, saves,
                                                  one_torch_thread):
    members = [{"lam": 0.5, "lr": 1e-3}, {"lam": 0.1, "lr": 3e-4}]
    config = {"modality": "audio", MEMBERS_KEY: members}
    setup = _setup(tmp_path, small_xmedia, save_each_selected=False)
    sdml_population_trial(config, setup)
    last = tune_stub["reports"][-1][0]
    assert len(saves) == 2  # one model per member, at the end
    for i, row in enumerate(last[MEMBERS_KEY]):
        directory = trial_io.trial_dir(setup.sweep_dir, slot_id("t0", i))
        assert _stored_best_epoch(directory, "audio") == row["best_epoch"]

    saves.clear()
    tune_stub.update(reports=[], stop_after=1, trial="t1")
    stopping = SDMLTrialSetup(**{**vars(setup), "save_each_selected": True})
    with pytest.raises(StoppedByScheduler):
        sdml_population_trial(config, stopping)
    rows = tune_stub["reports"][-1][0][MEMBERS_KEY]
    for i, row in enumerate(rows):  # epoch 1 is every member's selected epoch so far
        directory = trial_io.trial_dir(setup.sweep_dir, slot_id("t1", i))
        assert row["best_epoch"] == 1 and _stored_best_epoch(directory, "audio") == 1


def test_a_worker_reads_a_modality_once_for_its_trials(tmp_path, small_xmedia, tune_stub, monkeypatch,
                                                       one_torch_thread):
    from scalable_xmr.data.modality.dataset import Dataset

    reads = []
    real = Dataset.read_split
    monkeypatch.setattr(Dataset, "read_split", lambda self, m, s: reads.append((m, s)) or real(self, m, s))
    setup = _setup(tmp_path, small_xmedia, save_each_selected=False)
    for i, modality in enumerate(["audio", "text", "audio", "text"]):
        tune_stub["trial"] = f"t{i}"
        sdml_trial({"modality": modality, "lam": 0.5, "lr": 1e-3}, setup)
    assert reads == [("audio", "train"), ("audio", "val"), ("text", "train"), ("text", "val")]
