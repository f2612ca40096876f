"""The reaper, on a fake Ray: a "driver" whose children are a "GCS" (naming the session on its
command line) and a "raylet" (a process named raylet), which starts workers that are nobody's
descendants by the time the driver dies (double-forked orphans: like a worker the raylet starts in
the last moments, or one whose raylet is already gone). After a SIGKILL of the driver, the watcher
kills the recorded processes and the orphans that name the session or carry the raylet's pid in
``RAY_RAYLET_PID``, and leaves another session's process alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

SESSION = "session_2026-12-07_15-46-57_566689_9532"
OTHER = "session_2026-12-07_15-46-57_566689_9999"

# Starts `python -c SLEEP <args>` as an orphan (double fork) with `env`; prints its pid.
ORPHAN = """
import os, sys, subprocess
env = {**os.environ, **dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a and not a.startswith("--"))}
pid = os.fork()
if pid == 0:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *sys.argv[2:]], env=env,
                         start_new_session=True)
    open(sys.argv[1], "w").write(str(p.pid))
    os._exit(0)
os.waitpid(pid, 0)
"""

RAYLET = """
import os, subprocess, sys, time
out = sys.argv[1]
subprocess.run([sys.executable, "-c", sys.argv[2], out + ".worker", f"RAY_RAYLET_PID={os.getpid()}"])
store = "--object-store-name=/tmp/ray/%s/sockets/plasma_store" % sys.argv[3]
subprocess.run([sys.executable, "-c", sys.argv[2], out + ".named", store])
open(out + ".ready", "w").write("")
time.sleep(120)
"""

DRIVER = """
import subprocess, sys, time
raylet, out, orphan, raylet_code, session = sys.argv[1:6]
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--session-name={session}"])
subprocess.Popen([raylet, "-c", raylet_code, out, orphan, session])
time.sleep(120)
"""


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _living(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def test_sigkill_of_the_driver_ends_its_ray_and_the_sessions_orphans(tmp_path):
    raylet = tmp_path / "raylet"  # the kernel names the process after the path it was started by
    raylet.symlink_to(sys.executable)
    out = tmp_path / "pid"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(raylet), str(out), ORPHAN, RAYLET, SESSION])
    other = None
    try:
        _wait_for(Path(f"{out}.ready"))
        subprocess.run([sys.executable, "-c", ORPHAN, str(tmp_path / "other"), f"--session-name={OTHER}"],
                       check=True)
        other = int((tmp_path / "other").read_text())
        children = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        orphans = [int(Path(f"{out}.worker").read_text()), int(Path(f"{out}.named").read_text())]
        assert len(children) == 2 and not set(children) & set(orphans)
        subprocess.run([sys.executable, "-m", "scalable_xmr.distributed.reaper", str(driver.pid)], check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        time.sleep(1.5)  # the watcher has recorded the children and learned the session
        assert _living(children + orphans) == children + orphans
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 15
    while _living(children + orphans) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert not _living(children + orphans)
        assert _living([other]) == [other]
    finally:
        if other is not None and _living([other]):
            psutil.Process(other).kill()
