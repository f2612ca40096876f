"""Opening a remote URI as a pyarrow file system: S3 credentials and bucket checked before any
work, one file system cached per bucket, endpoint and identity (``open_uri``)."""

from __future__ import annotations

import os
from typing import Any

from scalable_xmr.errors import InputError
from scalable_xmr.uris import split_uri

_CREDENTIAL_VARS = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI")
_filesystems: dict[tuple, Any] = {}


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the standard variables name (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _has_s3_credentials() -> bool:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(v) for v in _CREDENTIAL_VARS):
        return True
    files = (env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"),
             env.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config"))  # profiles, roles
    return any(os.path.isfile(f) for f in files)


def open_uri(uri: str, what: str = "") -> tuple[Any, str]:
    """(pyarrow filesystem, path) of a ``scheme://...`` URI, checked before any work: an ``s3://``
    URI needs credentials configured (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile,
    ``~/.aws/credentials`` or ``~/.aws/config``; an EC2 instance role only through a profile, since
    probing the metadata service off EC2 hangs) and an existing bucket; ``AWS_ENDPOINT_URL[_S3]``
    names an S3-compatible server (pyarrow reads it itself). One line naming the URI otherwise."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    label = f"{what} {uri}".strip()
    scheme, rest = split_uri(uri)
    if scheme == "s3" and not _has_s3_credentials():
        raise InputError(f"{label}: no S3 credentials configured; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for an "
                         "S3-compatible server")
    bucket = rest.split("/", 1)[0]
    key = (bucket, s3_endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    cacheable = scheme == "s3" and "?" not in uri  # a URI with options builds its own
    try:
        if cacheable and key in _filesystems:  # checked once per process
            return _filesystems[key], rest.rstrip("/")
        fs, path = pafs.FileSystem.from_uri(uri)
        if scheme == "s3" and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise InputError(f"{label}: bucket {bucket!r} does not exist (endpoint "
                             f"{s3_endpoint() or 'AWS S3'})")
        if cacheable:
            _filesystems[key] = fs
    except (pa.ArrowException, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{label}: not a usable file-system URI ({first})") from None
    return fs, path.rstrip("/")
