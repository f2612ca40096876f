"""io.fileops: each change outside an atomic write does what it says and tells the after-write
hook itself (the object-storage mirror's way of following a run), also for a path already gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalable_xmr.io import after_write, fileops


@pytest.fixture
def heard():
    paths: list[Path] = []
    after_write.append(paths.append)
    yield paths
    after_write.remove(paths.append)


def test_each_change_is_made_and_heard(tmp_path, heard):
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.bin").write_bytes(b"a")
    fileops.copy(folder / "sub" / "a.bin", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"a"
    fileops.replace(folder, tmp_path / "moved")
    assert not folder.exists() and (tmp_path / "moved" / "sub" / "a.bin").is_file()
    fileops.append_text(tmp_path / "log", "one\n")
    fileops.append_text(tmp_path / "log", "two\n")
    assert (tmp_path / "log").read_text() == "one\ntwo\n"
    fileops.remove(tmp_path / "moved")
    fileops.remove(tmp_path / "b.bin")
    assert not (tmp_path / "moved").exists() and not (tmp_path / "b.bin").exists()
    assert heard == [tmp_path / "b.bin", tmp_path / "moved", tmp_path / "log", tmp_path / "log",
                     tmp_path / "moved", tmp_path / "b.bin"]


def test_removing_what_is_not_there_is_still_heard_unless_it_must_exist(tmp_path, heard):
    fileops.remove(tmp_path / "gone")  # a bucket may still hold it: the mirror deletes it there
    assert heard == [tmp_path / "gone"]
    with pytest.raises(FileNotFoundError):
        fileops.remove(tmp_path / "gone", missing_ok=False)
