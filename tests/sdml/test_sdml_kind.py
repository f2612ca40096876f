"""SDML as a kind of run (sdml/job.py SDMLRun), without Ray: each modality's configuration is
resolved once, the dataset is opened once, and a resume is checked against the stored run with
one line naming the modality, the key and both values."""

from __future__ import annotations

import pytest

import scalable_xmr.sdml.job as sdml_job
from scalable_xmr.config import ModalityOverrides, SDMLConfig
from scalable_xmr.errors import InputError
from scalable_xmr.sdml.job import SDMLRun, TrainRequest
from scalable_xmr.store.run_store import RunStore

SMALL = SDMLConfig(dim=32, hidden=64, epochs=2, batch_size=20)


def test_configs_are_resolved_once_and_the_dataset_opened_once(small_xmedia, tmp_path, monkeypatch):
    resolved, opened = [], []
    real_config_for, real_open = ModalityOverrides.config_for, sdml_job.open_dataset
    monkeypatch.setattr(ModalityOverrides, "config_for",
                        lambda self, base, m: resolved.append(m) or real_config_for(self, base, m))
    monkeypatch.setattr(sdml_job, "open_dataset", lambda uri: opened.append(uri) or real_open(uri))
    req = TrainRequest(str(tmp_path / "run"), small_xmedia, SMALL, modalities=("image", "text"),
                       overrides=ModalityOverrides({"text": {"lr": 5e-4}}))
    kind = SDMLRun(req)
    assert sorted(resolved) == ["image", "text"] and opened == [small_xmedia]
    store = RunStore(tmp_path / "run")
    meta = kind.new_meta(store)
    jobs = kind.specs(store, meta, ["image", "text"])
    assert sorted(resolved) == ["image", "text"]  # handing the jobs out resolves nothing again
    assert jobs[1].config.lr == 5e-4 and jobs[0].config.lr == meta.modalities["image"]["config"]["lr"]
    assert meta.modalities["text"]["config"]["lr"] == 5e-4  # on record before anything trains


def test_a_resume_with_another_setting_names_the_modality_the_key_and_both_values(small_xmedia, tmp_path):
    run = str(tmp_path / "run")
    first = SDMLRun(TrainRequest(run, small_xmedia, SMALL, modalities=("image",)))
    store = RunStore(run)
    meta = first.new_meta(store)
    first.specs(store, meta, ["image"])
    store.write(meta)
    again = SDMLRun(TrainRequest(run, small_xmedia, SMALL, modalities=("image",),
                                 overrides=ModalityOverrides({"image": {"lam": 0.25}})))
    with pytest.raises(InputError, match=r"modality 'image' started training with lam=.*, --resume asks for "
                                         r"lam=0\.25"):
        again.check_resume(store, store.read())
    first.check_resume(store, store.read())  # the same settings continue it
