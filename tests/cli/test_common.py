"""Helpers the job commands share (cli/common.py): where --data and a run's directory live."""

from __future__ import annotations

import pytest

from scalable_xmr.cli.common import check_data_path, local_dir
from scalable_xmr.errors import InputError


def test_local_dir_reads_a_file_uri_as_its_directory(tmp_path, monkeypatch):
    """Synthetic data is cached beside the run: for --run file:///x beside /x (it went to
    ./file:/x before), for a path beside the path, and for an s3:// run as it always did."""
    monkeypatch.chdir(tmp_path)
    assert local_dir(f"file://{tmp_path}/runs/x") == tmp_path / "runs" / "x"
    assert local_dir("runs/x") == tmp_path / "runs" / "x"
    assert local_dir("s3://bucket/runs/x") == tmp_path / "s3:" / "bucket" / "runs" / "x"


@pytest.mark.parametrize("form", ["{}", "file://{}"])
def test_check_data_path(tmp_path, form):
    check_data_path(form.format(tmp_path))
    missing = form.format(tmp_path / "nope")
    with pytest.raises(InputError, match=f"^--data {missing}: dataset path does not exist$"):
        check_data_path(missing)
    check_data_path("s3://bucket/data")  # checked when the dataset is opened
