"""Splits kept in memory between the trials one worker process runs (a sweep's reused actors).

A sweep runs many short trials of the same few modalities, and Tune reuses each trial actor for the
next trial (``reuse_actors=True``). Without a cache every trial decodes its modality's Parquet table
again: ~0.6 s for XMedia's 4000 x 4096 image train split on this machine's CPU, 5-10 % of a
trial that trains for 10 s. :func:`cached_splits` keeps what a trial read, keyed by what was read
and by the identity (size, modification time) of every source file, so a dataset rewritten under
a running sweep is read again rather than served stale.

The cached arrays are shared by every trial that gets them: callers must never write into them (the
trainers standardise into new tensors and gather batches into their own buffers). Memory is
bounded by ``XMR_DATA_CACHE_MB`` (default 4096; 0 turns the cache off): the least recently used
entries go first; an entry larger than the budget is returned uncached.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from scalable_xmr.data.modality.table import SplitData
from scalable_xmr.errors import InputError

Splits = dict[str, SplitData]
Identity = tuple[Hashable, ...]

BUDGET_ENV = "XMR_DATA_CACHE_MB"
DEFAULT_BUDGET_MB = 4096
BUDGET_BYTES: int | None = None  # None: from the environment (tests set a number)

_lock = threading.Lock()
_entries: OrderedDict[Hashable, tuple[Identity, Splits, int]] = OrderedDict()


def budget_bytes() -> int:
    """The cache's byte budget: :data:`BUDGET_BYTES`, else ``$XMR_DATA_CACHE_MB`` MiB (0 = off)."""
    if BUDGET_BYTES is not None:
        return BUDGET_BYTES
    text = os.environ.get(BUDGET_ENV, str(DEFAULT_BUDGET_MB)).strip()
    if not text.isdigit():
        raise InputError(f"{BUDGET_ENV} must be a whole number of MiB (0 turns the cache off), got {text!r}")
    return int(text) << 20


def _nbytes(splits: Splits) -> int:
    return sum(d.features.nbytes + d.labels.nbytes + d.ids.nbytes for d in splits.values())


def cached_splits(key: Hashable, identity: Identity | None, load: Callable[[], Splits]) -> Splits:
    """``load()``'s result, from memory when ``key`` was loaded before from sources of the same
    ``identity``. ``identity`` None (the sources cannot be told apart from a changed copy) loads
    without caching."""
    budget = budget_bytes()
    if identity is None or budget == 0:
        return load()
    with _lock:
        hit = _entries.get(key)
        if hit is not None and hit[0] == identity:
            _entries.move_to_end(key)
            return hit[1]
    splits = load()  # outside the lock: a trial thread must not wait for another's read
    size = _nbytes(splits)
    with _lock:
        _entries.pop(key, None)
        if size <= budget:
            _entries[key] = (identity, splits, size)
            while sum(e[2] for e in _entries.values()) > budget:
                _entries.popitem(last=False)
    return splits


def clear() -> None:
    """Drop every cached split (tests; a worker that wants its memory back)."""
    with _lock:
        _entries.clear()


def cached_keys() -> list[Hashable]:
    """The keys held, least recently used first."""
    with _lock:
        return list(_entries)
