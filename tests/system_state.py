"""Shows that a command (`make test`) leaves the machine as it found it.

    python3 tests/system_state.py run -- make test    # exit 1 naming each change, else the command's code
    python3 tests/system_state.py snapshot > before.json
    python3 tests/system_state.py compare before.json # exit 1 naming each change since the snapshot

What is compared before and after: the installed packages (dpkg or rpm), /etc/passwd and /etc/group,
this mount namespace's mounts, and the login files of $HOME (.bashrc, .ssh/authorized_keys, pip.conf,
...). ``run`` also puts shims of the privileged commands (apt-get, useradd, mount, sshd, su, ...) first
on PATH and names every call of one made outside a user namespace, so that a change undone before the
end (a tmpfs mounted then unmounted, as root) is caught too. A tripwire, not a sandbox: a command run
by absolute path, or a change through a system call, is seen only if it lasts.

Standard library only: it runs before `make test` builds .venv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

PRIVILEGED = ("apt", "apt-get", "dpkg", "useradd", "usermod", "userdel", "groupadd", "mount", "umount",
              "sshd", "su", "sudo")
HOME_FILES = (".bashrc", ".profile", ".bash_profile", ".bash_login", ".ssh/authorized_keys", ".ssh/config",
              ".config/pip/pip.conf", ".pip/pip.conf")
INITIAL_UID_MAP = "0 0 4294967295"  # /proc/self/uid_map outside any user namespace


def packages() -> list[str]:
    if shutil.which("dpkg-query"):
        fmt = "${binary:Package} ${Version} ${db:Status-Abbrev}\n"
        out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    if shutil.which("rpm"):
        return subprocess.run(["rpm", "-qa"], capture_output=True, text=True, check=True).stdout.splitlines()
    return ["(no dpkg-query or rpm here: packages not compared)"]


def mounts() -> list[str]:
    """``mount point, type, source`` of each mount this process sees (ids left out: they are reused)."""
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        ours, _, theirs = line.partition(" - ")
        rows.append(" ".join([ours.split()[4], *theirs.split()[:2]]))
    return rows


def home_files(home: Path) -> list[str]:
    return [f"~/{name} " + (hashlib.sha256((home / name).read_bytes()).hexdigest()[:16]
                            if (home / name).is_file() else "absent") for name in HOME_FILES]


def snapshot() -> dict[str, list[str]]:
    return {"packages": packages(), "users": Path("/etc/passwd").read_text().splitlines(),
            "groups": Path("/etc/group").read_text().splitlines(), "mounts": mounts(),
            "home": home_files(Path(os.path.expanduser("~")))}


def diff(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """One line per entry added (+) or removed (-), by kind."""
    lines = []
    for kind in before.keys() | after.keys():
        old, new = Counter(before.get(kind, [])), Counter(after.get(kind, []))
        lines += [f"{kind}: + {x}" for x in sorted((new - old).elements())]
        lines += [f"{kind}: - {x}" for x in sorted((old - new).elements())]
    return sorted(lines)


def write_shims(folder: Path, log: Path) -> None:
    """One shim per privileged command: appends ``name<TAB>uid_map<TAB>args`` to ``log``, then
    runs the real command with the PATH it would have had."""
    path = os.environ.get("PATH", "")
    for name in PRIVILEGED:
        shim = folder / name
        shim.write_text("#!/bin/sh\n# tests/system_state.py: record this call, then run the real one\n"
                        "read -r map < /proc/self/uid_map\n"
                        f"printf '%s\\t%s\\t%s\\n' {name} \"$map\" \"$*\" >> {shlex.quote(str(log))}\n"
                        f"PATH={shlex.quote(path)}; export PATH\nexec {name} \"$@\"\n")
        shim.chmod(0o755)


def outside_userns(calls: list[str]) -> list[str]:
    """The recorded calls made in the initial user namespace (inside one, root is not the machine's)."""
    found = []
    for call in calls:
        name, uid_map, args = call.split("\t", 2)
        if " ".join(uid_map.split()) == INITIAL_UID_MAP:
            found.append(f"ran: {name} {args}".rstrip())
    return found


def run(command: list[str]) -> int:
    before = snapshot()
    with tempfile.TemporaryDirectory(prefix="xmr-system-state-") as tmp:
        shims, log = Path(tmp) / "bin", Path(tmp) / "calls.log"
        shims.mkdir()
        log.touch()
        write_shims(shims, log)
        env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"}
        code = subprocess.call(command, env=env)
        calls = outside_userns(log.read_text().splitlines())
    changes = calls + diff(before, snapshot())
    if changes:
        print(f"system_state.py: `{shlex.join(command)}` changed the machine (or ran a privileged "
              "command outside a user namespace):", *(f"  {c}" for c in changes), sep="\n", file=sys.stderr)
        return code or 1
    print(f"system_state.py: `{shlex.join(command)}` left packages, users, groups, mounts and login "
          "files as found; no privileged command ran outside a user namespace", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("snapshot", help="print the state as JSON")
    compare = sub.add_parser("compare", help="compare the state now with a snapshot file")
    compare.add_argument("before", type=Path)
    running = sub.add_parser("run", help="run a command (after --) and compare the state around it")
    running.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.what == "snapshot":
        print(json.dumps(snapshot(), indent=1))
        return 0
    if args.what == "compare":
        changes = diff(json.loads(args.before.read_text()), snapshot())
        print(*changes, sep="\n")
        return 1 if changes else 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run: give the command after --, e.g. run -- make test")
    return run(command)


if __name__ == "__main__":
    sys.exit(main())
