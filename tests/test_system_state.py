"""tests/system_state.py, which .ci/run wraps around `make test`: it names what a command changed
on the machine and the privileged commands it ran outside a user namespace, and nothing else."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

from system_state import diff, outside_userns, snapshot

SCRIPT = Path(__file__).with_name("system_state.py")


def state_run(tmp_path: Path, command: str) -> subprocess.CompletedProcess:
    """``system_state.py run -- sh -c COMMAND`` with HOME in ``tmp_path``, and without the shims of
    a run around this test (CI's): the privileged call below is this test's, not the suite's."""
    path = [p for p in os.environ["PATH"].split(os.pathsep)
            if not Path(p).parent.name.startswith("xmr-system-state-")]
    env = {**os.environ, "HOME": str(tmp_path), "PATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, str(SCRIPT), "run", "--", "sh", "-c", command], env=env,
                          capture_output=True, text=True, timeout=120)


def test_diff_names_each_entry_added_or_removed():
    before = {"users": ["root:x:0:0::/root:/bin/bash"], "mounts": ["/ ext4 /dev/vda", "/tmp/x tmpfs tmpfs"]}
    after = {"users": ["root:x:0:0::/root:/bin/bash", "xmrtest:x:1001:1001::/home/xmrtest:/bin/bash"],
             "mounts": ["/ ext4 /dev/vda"]}
    assert diff(before, after) == ["mounts: - /tmp/x tmpfs tmpfs",
                                   "users: + xmrtest:x:1001:1001::/home/xmrtest:/bin/bash"]
    assert diff(after, after) == []


def test_a_snapshot_sees_this_machine():
    state = snapshot()
    assert any(line.startswith(f"{getpass.getuser()}:") for line in state["users"])
    assert any(line.split()[0] == "/" for line in state["mounts"])
    assert state["packages"] and len(state["home"]) == 8


def test_only_calls_outside_a_user_namespace_count():
    calls = ["mount\t         0       1001          1\t-t tmpfs -o size=256m tmpfs /tmp/d",
             "useradd\t         0          0 4294967295\t--create-home xmrtest"]
    assert outside_userns(calls) == ["ran: useradd --create-home xmrtest"]


def test_a_harmless_command_passes_with_its_exit_code(tmp_path):
    done = state_run(tmp_path, f"echo hi > {tmp_path}/scratch")  # a file in a temp dir is fine
    assert done.returncode == 0, done.stderr
    assert "left packages, users, groups, mounts and login files as found" in done.stderr
    assert state_run(tmp_path, "exit 3").returncode == 3


def test_a_changed_login_file_is_named(tmp_path):
    done = state_run(tmp_path, 'echo "export X=1" >> "$HOME/.bashrc"')
    assert done.returncode == 1
    assert "home: + ~/.bashrc " in done.stderr and "home: - ~/.bashrc absent" in done.stderr, done.stderr


def test_a_privileged_command_is_named_even_when_it_changes_nothing(tmp_path):
    done = state_run(tmp_path, "useradd --help >/dev/null 2>&1; true")  # harmless, but not allowed
    assert done.returncode == 1
    assert "ran: useradd --help" in done.stderr, done.stderr
