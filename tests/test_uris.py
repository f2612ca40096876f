"""The one local-path-or-URI rule (scalable_xmr/uris.py), on a table of every kind of target."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalable_xmr.errors import InputError
from scalable_xmr.uris import absolute, is_remote, local_path, scheme, split_uri

HOME = Path("~").expanduser()

# target, scheme, is_remote, local_path (None: a remote URI, ValueError)
TARGETS = [
    ("runs/x", None, False, Path("runs/x")),
    ("/abs/runs/x", None, False, Path("/abs/runs/x")),
    ("~/x", None, False, HOME / "x"),
    ("file:///abs/runs/x", "file", False, Path("/abs/runs/x")),
    ("FILE:///abs/x", "file", False, Path("/abs/x")),
    ("file:///tmp/a%20b", "file", False, Path("/tmp/a b")),  # as Path.as_uri writes it, pyarrow reads it
    ("s3://bucket/runs/x", "s3", True, None),
    ("S3://bucket/runs/x", "s3", True, None),
    ("gs://bucket/data", "gs", True, None),
    ("hdfs://namenode:8020/data", "hdfs", True, None),
    ("sqlite:///mlflow.db", "sqlite", True, None),  # a tracking URI: not a storage target at all
    ("http://127.0.0.1:5000", "http", True, None),
    ("file:rel", None, False, Path("file:rel")),  # MLflow's form, no "//": a path named so here
    ("runs/a://b", None, False, Path("runs/a://b")),  # a scheme only at the start
]


@pytest.mark.parametrize(("target", "kind", "remote", "path"), TARGETS)
def test_the_rule_on_every_kind_of_target(target, kind, remote, path):
    assert scheme(target) == kind
    assert is_remote(target) is remote
    if path is None:
        with pytest.raises(ValueError, match="URI, not a local path"):
            local_path(target)
    else:
        assert local_path(target) == path
        assert local_path(Path(target) if kind is None else target) == path  # PathLike too


@pytest.mark.parametrize(("target", "expected"), [
    ("runs/x", str(Path.cwd() / "runs" / "x")),
    ("~/x", str(HOME.resolve() / "x")),
    ("/abs/x", "/abs/x"),
    ("file:///abs/x", "file:///abs/x"),  # absolute already: recorded as given
    ("s3://bucket/runs/x", "s3://bucket/runs/x"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_absolute(target, expected, tmp_path):
    assert absolute(target) == expected


def test_split_uri():
    assert split_uri("S3://bucket/runs/x") == ("s3", "bucket/runs/x")
    assert split_uri("file:///abs") == ("file", "/abs")
    with pytest.raises(ValueError, match="is a path, not a scheme:// URI"):
        split_uri("runs/x")


@pytest.mark.parametrize("target", ["file://host/x", "file://rel/x", "file://localhost/abs"])
def test_a_file_uri_with_a_host_is_refused(target):
    with pytest.raises(InputError, match=r"file:///absolute/path \(host '.+' given\)"):
        local_path(target)
    assert not is_remote(target)
