"""load_run on object storage: a finished run uploaded to moto's S3 server on 127.0.0.1 (started
here), read through the run store's local mirror (store/remote.py); the results equal the local
run's."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.fs as pafs
import pytest
from servers import MotoServer

from scalable_xmr.io import open_uri
from scalable_xmr.serving import load_run
from scalable_xmr.store import remote

BUCKET = "xmr-serving"


@pytest.fixture
def s3_env(tmp_path, monkeypatch):
    server = MotoServer(tmp_path / "moto").start()
    try:
        server.create_bucket(BUCKET)
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
        yield server
    finally:
        server.stop()


def test_a_run_on_s3_searches_like_the_local_one(sdml_run, s3_env, one_torch_thread):
    uri = f"s3://{BUCKET}/runs/small"
    fs, key = open_uri(uri, "--run")
    pafs.copy_files(sdml_run, key, destination_filesystem=fs)
    run = load_run(uri)
    assert run.location == uri  # what Ray workers on other nodes are given
    assert os.fspath(run.store.root) != sdml_run  # read through the local mirror
    here = load_run(sdml_run).search("image", ["image-00150"], "text", k=5)
    there = run.search("image", ["image-00150"], "text", k=5)
    np.testing.assert_array_equal(there.ids, here.ids)
    np.testing.assert_array_equal(there.scores, here.scores)
