"""open_uri (io/filesystems.py): a URI as a pyarrow file system, refused in one line."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from scalable_xmr.errors import InputError
from scalable_xmr.io import open_uri


def test_a_file_uri_opens_the_local_file_system(tmp_path):
    fs, path = open_uri(f"file://{tmp_path}/")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)


def test_s3_without_credentials_is_one_line(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(InputError, match=r"^--run s3://b/runs/x: no S3 credentials configured"):
        open_uri("s3://b/runs/x", "--run")


def test_an_unknown_scheme_is_one_line():
    with pytest.raises(InputError, match=r"^--data nosuch://b/x: not a usable file-system URI"):
        open_uri("nosuch://b/x", "--data")
