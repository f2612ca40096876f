"""A private local Ray dies with the process that started it, even when that process is SIGKILLed.

Ray's own fate-sharing ends the GCS and the raylet when their driver dies, but not everything: after
a SIGKILL of the driver, the raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are
left to init and stay alive for minutes, trying to report the raylet's death to a GCS that is gone.
A long-running command (``xmr serve``, ``xmr index``) killed with ``kill -9`` must not leave them.

:func:`watch` starts a small watcher process (its own session, so a Ctrl-C meant for the command
does not reach it) that every :data:`INTERVAL` s records the command's descendants (pid and start
time). Once the command is gone, it kills every recorded process still alive with the same start
time (a reused pid is never touched). A worker the raylet starts in the last interval before the
SIGKILL is not recorded, and once the raylet is gone it waits for minutes, an orphan: so the watcher
also learns the Ray session's name (``session_<date>_<time>_<n>_<pid>``, unique to this Ray) from
the recorded processes' command lines, and at the end kills, for a few rounds until none is left,
every process of this user whose command line names that session or whose ``RAY_RAYLET_PID``
(which Ray gives its workers; a worker's title, ``ray::IDLE``, names nothing) is a recorded raylet.
Then it exits.

    python -m scalable_xmr.distributed.reaper <pid>
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

INTERVAL = 0.25  # seconds between snapshots of the command's descendants
SESSION = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")  # Ray's session name


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


def _session(pids) -> str | None:
    """The Ray session named in the command line of one of ``pids`` (the GCS and raylet name it)."""
    import psutil

    for pid in pids:
        try:
            found = SESSION.search(" ".join(psutil.Process(pid).cmdline()))
        except psutil.Error:
            continue
        if found:
            return found.group(0)
    return None


def _of_session(session: str | None, raylets: set[str]) -> dict[int, float]:
    """This user's processes (never this watcher) whose command line names ``session`` or whose
    ``RAY_RAYLET_PID`` is one of ``raylets``."""
    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "uids", "create_time"]):
        try:
            if p.pid == os.getpid() or p.info["uids"].real != os.getuid():
                continue
            if (session and session in " ".join(p.info["cmdline"] or ())) or \
                    (raylets and p.environ().get("RAY_RAYLET_PID") in raylets):
                out[p.pid] = p.info["create_time"]
        except (psutil.Error, AttributeError, TypeError):
            pass
    return out


def _raylets(seen: dict[int, float]) -> set[str]:
    import psutil

    out = set()
    for pid in seen:
        try:
            if psutil.Process(pid).name() == "raylet":
                out.add(str(pid))
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
    session, raylets = None, set()
    while True:
        try:
            alive = proc.is_running() and proc.create_time() == started and \
                proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if not alive:
            _kill(seen)
            if session or raylets:
                _kill_session(session, raylets)
            return 0
        try:
            now = _descendants(proc)
        except psutil.Error:
            now = {}
        born = {p: now[p] for p in now.keys() - seen.keys()}
        if born:
            session = session or _session(born)
            raylets |= _raylets(born)
        seen.update(now)
        time.sleep(INTERVAL)


def _kill_session(session: str | None, raylets: set[str], rounds: int = 3, pause: float = 0.2,
                  most: int = 50) -> None:
    """Kill what belongs to the session (:func:`_of_session`) until ``rounds`` looks in a row find
    nothing (a dying raylet may still be starting a worker), ``most`` looks at most."""
    quiet = 0
    for _ in range(most):
        quiet = 0 if _kill(_of_session(session, raylets)) else quiet + 1
        if quiet >= rounds:
            return
        time.sleep(pause)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.fork() > 0:  # the starter exits; the watcher lives on, a child of init
        os._exit(0)
    sys.exit(run(int(sys.argv[1])))
