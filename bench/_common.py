"""Shared helpers for the benchmarks: the machine's description, medians of repeats, plain tables."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> list[tuple[str, str]]:
    """(key, value) rows describing where and when the numbers were taken."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("cpu", cpu_model()),
        ("cores", f"{os.cpu_count()} logical, {usable} usable by this process"),
        ("torch threads", str(threads)),
        ("torch", torch.__version__),
        ("python", platform.python_version()),
        ("load average at start (1/5/15 min)", load),
    ]


def median_time(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> float:
    """Median over ``repeats`` of the seconds one call of ``fn`` takes (see :func:`call_times`)."""
    return statistics.median(call_times(fn, repeats, min_seconds))


def best_time(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> float:
    """Fastest of ``repeats`` timings of one call of ``fn`` (see :func:`call_times`)."""
    return min(call_times(fn, repeats, min_seconds))


def call_times(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> list[float]:
    """``repeats`` timings of one call of ``fn``, in seconds.

    Each repeat calls ``fn`` as many times as needed to last ``min_seconds`` (at least once) and
    divides, so that very short calls are not dominated by timer resolution.
    """
    times = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        times.append(elapsed / calls)
    return times


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pastes straight into BENCHMARKS.md); numbers must be pre-formatted."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n### {title}\n")
    for i, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def print_info(title: str, rows: Sequence[tuple[str, str]]) -> None:
    print_table(title, ("", ""), rows)
