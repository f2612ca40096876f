"""Atomic writes (io/atomic.py) and the package's public names (io/__init__.py)."""

from __future__ import annotations

import pytest

import scalable_xmr.io as io
from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_path, atomic_write_bytes, check_writable, written

PUBLIC = {"absolute_uri", "after_write", "atomic_path", "atomic_write_bytes", "atomic_write_json",
          "atomic_write_text", "check_writable", "open_uri", "read_json", "s3_endpoint", "written"}


def test_the_package_exports_exactly_the_names_io_py_had():
    assert set(io.__all__) == PUBLIC
    assert all(hasattr(io, name) for name in PUBLIC)


def test_a_write_lands_whole_and_is_announced(tmp_path):
    heard = []
    io.after_write.append(heard.append)
    try:
        atomic_write_bytes(tmp_path / "d" / "x.bin", b"abc")
        written(tmp_path / "gone")
    finally:
        io.after_write.remove(heard.append)
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"abc"
    assert heard == [tmp_path / "d" / "x.bin", tmp_path / "gone"]
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.bin"]  # no temporary left


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_check_writable_reads_a_file_uri_as_its_path(tmp_path):
    """file:///... is a local path (scalable_xmr.uris): checked like one, as a remote URI is not."""
    (tmp_path / "f").write_text("")
    check_writable(f"file://{tmp_path}/new/run", "--out")
    with pytest.raises(InputError, match=r"--out file://.*/f/run: .*/f is a file, not a directory"):
        check_writable(f"file://{tmp_path}/f/run", "--out")
    check_writable("s3://bucket/runs/x", "--run")  # the filesystem layer reports its own errors
