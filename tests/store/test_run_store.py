"""The run store: run.json through its one schema, and what a new job may do with a directory."""

from __future__ import annotations

import json

import pytest

from scalable_xmr.errors import InputError, MissingError, RunStateError
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore


def sdml_meta(**kw) -> RunMeta:
    return RunMeta(kind="sdml", dataset={"uri": "/d", "name": "d"}, modalities={"a": {"status": "finished"},
                                                                              "b": {"status": "pending"}},
                   **kw)


def test_run_json_round_trips_through_the_schema(tmp_path):
    store = RunStore(tmp_path / "run")
    store.root.mkdir()
    meta = sdml_meta(projection={"sha256": "x"})
    store.write(meta)
    written = json.loads(store.run_json.read_text())
    assert written["kind"] == "sdml" and written["updated"] and "members" not in written  # branch-only
    back = store.read()
    assert back == meta and back.finished_modalities() == ["a"]
    meta.fail(ValueError("boom"))
    assert (meta.status, meta.error) == ("failed", "ValueError: boom")
    meta.finish()
    assert (meta.status, meta.error) == ("finished", None)


@pytest.mark.parametrize("content, match", [
    ({"format": 2, "kind": "sdml", "dataset": {}}, "not a scalable_xmr run.json"),
    ([1, 2], "not a scalable_xmr run.json"),
    ({"format": 1, "kind": "sdml"}, "missing key 'dataset'"),
    ({"format": 1, "kind": "pair", "dataset": {}}, "kind must be one of sdml, branch, got 'pair'"),
    ({"format": 1, "kind": "branch", "dataset": {}, "status": "done"}, "status must be one of"),
    ({"format": 1, "kind": "branch", "dataset": {}, "colour": 1}, "unknown key 'colour'"),
])
def test_a_foreign_run_json_is_refused_naming_the_file(tmp_path, content, match):
    store = RunStore(tmp_path)
    store.run_json.write_text(json.dumps(content))
    with pytest.raises(InputError, match=match) as e:
        store.read()
    assert str(store.run_json) in str(e.value)


def test_what_a_new_job_may_do_with_a_directory(tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.prepare_new(overwrite=False, resume=False) == "new"  # nothing there
    with pytest.raises(RunStateError, match="no run to resume"):
        store.prepare_new(overwrite=False, resume=True)
    store.root.mkdir()
    (store.root / "junk").write_text("x")
    with pytest.raises(RunStateError, match="holds no run.json"):
        store.prepare_new(overwrite=False, resume=False)
    # --overwrite empties the directory (the job's lock, store/lock.py, stays while it runs)
    assert store.prepare_new(overwrite=True, resume=False) == "new" and not any(store.root.iterdir())
    store.write(sdml_meta())
    with pytest.raises(RunStateError, match="already holds a running run; pass --resume"):
        store.prepare_new(overwrite=False, resume=False)
    assert store.prepare_new(overwrite=False, resume=True) == "resume"
    with pytest.raises(RunStateError, match="not a finished run"):
        store.read_finished()
    with pytest.raises(MissingError, match="run directory not found"):
        RunStore(tmp_path / "nope").read()


def test_layout_of_both_kinds_of_run(tmp_path):
    store = RunStore(tmp_path)
    assert store.checkpoint_path("image") == tmp_path / "modalities/image/checkpoints/last.pt"
    assert store.embeddings_path("image", "test") == tmp_path / "modalities/image/embeddings/test.parquet"
    assert store.member_dir("mtfn-seed1") == tmp_path / "models/mtfn-seed1"


def test_a_file_uri_is_the_local_run_directory(tmp_path):
    """file:///... is a local path (scalable_xmr.uris): no mirror, the directory itself."""
    store = RunStore(f"file://{tmp_path}/a%20run")
    assert store.root == (tmp_path / "a run").resolve() and store.uri == str(store.root)
    assert RunStore(f"file://{tmp_path}/run").root == RunStore(tmp_path / "run").root


def test_a_full_disk_names_the_file_being_written_not_its_temporary(tmp_path, monkeypatch):
    import errno

    from scalable_xmr.io import atomic_write_bytes

    (tmp_path / "x.json").write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_write_bytes(tmp_path / "x.json", b"new")
    assert info.value.filename == str(tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left
