"""A staged commit on its own (runs/staging.py): folders moved in with one rename, what they
replace moved aside, and a rollback that leaves the run byte-identical. No Ray, no model."""

from __future__ import annotations

from pathlib import Path

from scalable_xmr.runs.staging import STAGING, Commit, Staging
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def finished_run(root: Path) -> RunStore:
    store = RunStore(root)
    root.mkdir()
    (root / "projection.arrow").write_bytes(b"P")
    meta = RunMeta(kind="sdml", dataset={"uri": "/d"}, modalities={"image": {"status": "finished"}})
    meta.finish()
    store.write(meta)
    store.metrics_path.write_text('{"map": {}}')
    (root / "plots").mkdir()
    (root / "plots" / "map_heatmap.png").write_bytes(b"old plot")
    (root / "modalities" / "image").mkdir(parents=True)
    (root / "modalities" / "image" / "model.pt").write_bytes(b"old image")
    return store


def test_staging_copies_what_the_trainers_need_and_goes_without_a_trace(tmp_path):
    store = finished_run(tmp_path / "run")
    staging = Staging(store, ("projection.arrow",))
    assert staging.root.parent == store.root / STAGING
    assert (staging.root / "projection.arrow").read_bytes() == b"P"
    staging.remove()
    assert not (store.root / STAGING).exists()


def test_a_commit_moves_folders_in_and_a_rollback_restores_the_run_byte_for_byte(tmp_path):
    store = finished_run(tmp_path / "run")
    before = tree(store.root)
    staging = Staging(store, ("projection.arrow",))
    for m, text in (("image", b"new image"), ("video", b"new video")):
        (staging.store.modality_dir(m)).mkdir(parents=True)
        (staging.store.modality_dir(m) / "model.pt").write_bytes(text)
    commit = Commit(store, staging)
    commit.move_in(staging.store.modality_dir("image"), store.modality_dir("image"))  # replaces image
    commit.move_in(staging.store.modality_dir("video"), store.modality_dir("video"))
    assert (store.modality_dir("image") / "model.pt").read_bytes() == b"new image"
    assert (store.modality_dir("video") / "model.pt").read_bytes() == b"new video"
    # The commit goes on to rewrite metrics, plots and run.json, then fails: all of it is undone.
    store.metrics_path.write_text('{"map": {"image->video": 0.5}}')
    (store.plots_dir / "map_heatmap.png").write_bytes(b"new plot")
    (store.plots_dir / "precision_recall.png").write_bytes(b"a plot the run did not have")
    meta = store.read()
    meta.modalities["video"] = {"status": "finished"}
    store.write(meta)
    commit.rollback()
    staging.remove()
    assert tree(store.root) == before
    assert not store.modality_dir("video").exists()
