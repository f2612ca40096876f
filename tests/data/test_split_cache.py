"""The per-process split cache of sweep trials (data/modality/cache.py): hits share arrays, a
changed source file is read again, the byte budget evicts least recently used entries, and a
trainer with ``reuse_data`` reads its modality's table once."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from scalable_xmr.data.filesystem import resolve_uri, source_identity
from scalable_xmr.data.modality import cache
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.data.modality.table import SplitData


@pytest.fixture(autouse=True)
def empty_cache():
    cache.clear()
    yield
    cache.clear()


def _splits(n: int, dim: int = 4) -> dict[str, SplitData]:
    return {"train": SplitData(np.array([str(i) for i in range(n)], dtype=object),
                               np.zeros((n, 3), np.float32), np.zeros((n, dim), np.float32))}


def test_hit_returns_the_same_arrays_and_a_new_identity_reloads():
    loads = []

    def load():
        loads.append(1)
        return _splits(5)

    first = cache.cached_splits("k", ("a",), load)
    assert cache.cached_splits("k", ("a",), load) is first and len(loads) == 1
    again = cache.cached_splits("k", ("b",), load)  # the source changed: read again
    assert again is not first and len(loads) == 2
    assert cache.cached_splits("k", ("b",), load) is again and len(loads) == 2


def test_no_identity_is_never_cached():
    calls = []
    for _ in range(2):
        cache.cached_splits("k", None, lambda: calls.append(1) or _splits(2))
    assert len(calls) == 2 and cache.cached_keys() == []


def test_budget_evicts_least_recently_used(monkeypatch):
    one = _splits(10)  # 10 x 4 x 4 + 10 x 3 x 4 bytes + ids
    size = cache._nbytes(one)
    monkeypatch.setattr(cache, "BUDGET_BYTES", 2 * size)
    cache.cached_splits("a", (1,), lambda: _splits(10))
    cache.cached_splits("b", (1,), lambda: _splits(10))
    cache.cached_splits("a", (1,), lambda: pytest.fail("a is cached"))  # a is now the newest
    cache.cached_splits("c", (1,), lambda: _splits(10))
    assert cache.cached_keys() == ["a", "c"]  # b, least recently used, went
    cache.cached_splits("huge", (1,), lambda: _splits(100))  # over the budget alone: not kept
    assert cache.cached_keys() == ["a", "c"]


def test_the_budget_comes_from_the_environment(monkeypatch):
    from scalable_xmr.errors import InputError

    monkeypatch.setenv("XMR_DATA_CACHE_MB", "0")  # off: every call loads
    calls = []
    for _ in range(2):
        cache.cached_splits("k", (1,), lambda: calls.append(1) or _splits(2))
    assert len(calls) == 2 and cache.cached_keys() == []
    monkeypatch.setenv("XMR_DATA_CACHE_MB", "1")
    assert cache.budget_bytes() == 1 << 20
    monkeypatch.setenv("XMR_DATA_CACHE_MB", "lots")
    with pytest.raises(InputError, match=r"XMR_DATA_CACHE_MB must be a whole number of MiB .*got 'lots'"):
        cache.cached_splits("k", (1,), lambda: _splits(2))


def test_source_identity_sees_a_rewritten_table(tmp_path, small_xmedia):
    data = tmp_path / "data"
    shutil.copytree(small_xmedia, data)
    ds = open_dataset(str(data), validate=False)
    before = ds.source_identity("audio")
    assert [os.path.basename(p) for p, _, _ in before] == ["dataset.json", "audio.parquet"]
    assert ds.source_identity("audio") == before
    table = data / "audio.parquet"
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert ds.source_identity("audio") != before
    # a table of shards: every file counts
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.parquet").write_bytes(b"1")
    (shards / "b.parquet").write_bytes(b"22")
    ident = source_identity(*resolve_uri(str(shards)))
    assert [(os.path.basename(p), n) for p, n, _ in ident] == [("a.parquet", 1), ("b.parquet", 2)]
