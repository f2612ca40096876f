"""One job per run directory: a live holder is named in one line, a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from one_line import fails_one_line

from scalable_xmr.store.lock import LOCK_NAME, run_lock
from scalable_xmr.store.run_store import RunStore


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock until killed (the lock is written before 'held')."""
    code = textwrap.dedent(f"""
        import time
        from scalable_xmr.store.lock import run_lock
        with run_lock({str(run)!r}, command="xmr train --run {run}"):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_job_gets_one_line_naming_the_holder(tmp_path, capsys, small_xmedia):
    from scalable_xmr.cli.train import main

    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        (run / "keep.txt").write_text("the first job's work")
        err = fails_one_line(main, capsys, ["--data", small_xmedia, "--run", str(run), "--no-tracking",
                                            "--overwrite"], f"{run}: in use by pid {holder.pid} on ")
        assert "xmr train --run" in err and "wait for it to end" in err
        assert (run / "keep.txt").read_text() == "the first job's work"  # --overwrite deleted nothing
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                             "since": "2026-01-01T00:00:00+00:00", "command": "xmr train"}))
    with pytest.warns(UserWarning, match=f"took over a stale lock \\(pid {dead} on .*that job is gone"):
        with run_lock(run) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_the_lock_is_released_on_error_and_a_refused_job_leaves_no_directory(tmp_path):
    run = tmp_path / "new-run"
    with pytest.raises(ZeroDivisionError):
        with run_lock(run):
            assert (run / LOCK_NAME).is_file()
            raise ZeroDivisionError
    assert not run.exists()
    keep = tmp_path / "kept"
    keep.mkdir()
    with run_lock(keep):
        (keep / "run.json").write_text("{}")
    assert sorted(p.name for p in keep.iterdir()) == ["run.json"]


def test_overwrite_keeps_the_lock_of_the_job_that_holds_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "stray.txt").write_text("x")
    (run / "sub").mkdir()
    with run_lock(run):
        assert RunStore(run).prepare_new(overwrite=True, resume=False) == "new"
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    # an empty directory holding only a lock is a new run
    with run_lock(run):
        assert RunStore(run).prepare_new(overwrite=False, resume=False) == "new"


def test_racing_processes_never_hold_it_at_once(tmp_path):
    """4 processes each take the lock 5 times (retrying while refused) and log enter/exit under it:
    the log must strictly alternate, whatever the timing."""
    run, log = tmp_path / "run", tmp_path / "log.txt"
    run.mkdir()
    code = textwrap.dedent(f"""
        import os, time
        from scalable_xmr.errors import RunStateError
        from scalable_xmr.store.lock import run_lock
        done = 0
        while done < 5:
            try:
                with run_lock({str(run)!r}):
                    with open({str(log)!r}, "a") as f:
                        f.write(f"enter {{os.getpid()}}\\n")
                    time.sleep(0.02)
                    with open({str(log)!r}, "a") as f:
                        f.write(f"exit {{os.getpid()}}\\n")
                done += 1
            except RunStateError:
                time.sleep(0.005)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(events) == 40
    for (kind_a, pid_a), (kind_b, pid_b) in zip(events[::2], events[1::2], strict=True):
        assert (kind_a, kind_b) == ("enter", "exit") and pid_a == pid_b
