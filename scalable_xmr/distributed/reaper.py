"""A private local Ray dies with the process that started it, even when that process is SIGKILLed.

Ray's own fate-sharing ends the GCS and the raylet when their driver dies, but not everything: after
a SIGKILL of the driver, the raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are
left to init and stay alive for minutes, trying to report the raylet's death to a GCS that is gone.
A long-running command (``xmr serve``, ``xmr index``) killed with ``kill -9`` must not leave them.

:func:`watch` starts a small watcher process (its own session, so a Ctrl-C meant for the command
does not reach it) that every :data:`INTERVAL` s records the command's descendants (pid and start
time). Once the command is gone, it kills every recorded process still alive with the same start
time (a reused pid is never touched), then exits. A process born in the last interval before the
SIGKILL can be missed; Ray's own fate-sharing still ends it later.

    python -m scalable_xmr.distributed.reaper <pid>
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

INTERVAL = 0.25  # seconds between snapshots of the command's descendants


def watch(pid: int | None = None) -> None:
    """Start the watcher of ``pid`` (default: this process), detached: it is not this process's
    child (Ray SIGKILLs a dead driver's children, which would take the watcher with it)."""
    argv = [sys.executable, "-m", "scalable_xmr.distributed.reaper", str(pid or os.getpid())]
    starter = subprocess.Popen(argv,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, close_fds=True)
    starter.wait()  # it forks the watcher and exits at once


def _descendants(proc) -> dict[int, float]:
    import psutil

    out = {}
    for child in proc.children(recursive=True):
        try:
            out[child.pid] = child.create_time()
        except psutil.Error:
            pass
    return out


def _kill(seen: dict[int, float]) -> int:
    """SIGKILL each recorded process that is still the one recorded; returns how many."""
    import psutil

    killed = 0
    for pid, started in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:
                p.send_signal(signal.SIGKILL)
                killed += 1
        except psutil.Error:
            pass
    return killed


def run(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
    except psutil.Error:
        return 0
    seen: dict[int, float] = {}
    while True:
        try:
            alive = proc.is_running() and proc.create_time() == started and \
                proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if not alive:
            _kill(seen)
            return 0
        try:
            seen.update(_descendants(proc))
        except psutil.Error:
            pass
        time.sleep(INTERVAL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.fork() > 0:  # the starter exits; the watcher lives on, a child of init
        os._exit(0)
    sys.exit(run(int(sys.argv[1])))
