"""README.md runs as written: every ```bash block, top to bottom, in one fresh directory.

Each command is run as a user would type it from the repository root (here: a scratch directory
whose `.venv` and `jobs` point into this checkout, so nothing is written into the repo), with one
change: training commands get `--epochs 1` so the whole README runs in a few minutes. `make run` is
run as its Makefile recipe (also with 1 epoch); `make test` is this suite itself. A block the test
cannot run must say why, in an HTML comment right above it (`<!-- not run ...: reason -->`). A block
marked `<!-- one shell script: ... -->` (a server started in the background, waited for, queried and
stopped) runs as one bash script, with `PORT=8000` set to a free port instead.

Every job the README runs (training, add-modality, sweeps, index, search) is also checked quiet as it
runs: at most 3 lines of its output are a library's (tests/e2e/quiet_lines.py), as a user sees it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from quiet_lines import assert_quiet

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ("jobs/train_xmedia.py", "jobs/add_modality.py", "jobs/train_pairs.py", "jobs/sweep.py")
NOT_RUN = re.compile(r"<!--\s*not run[^:]*:\s*(.+?)\s*-->")
SCRIPT = re.compile(r"<!--\s*one shell script[^:]*:\s*(.+?)\s*-->")


def readme_blocks(text: str, scripts: list[str] | None = None) -> list[tuple[str | None, list[str]]]:
    """(reason it is not run or None, commands) of every ```bash block, in order. A block marked as
    one shell script is returned as one command, its whole text (and appended to ``scripts``)."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            reason = m.group(1) if (m := NOT_RUN.search(before)) else None
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if SCRIPT.search(before):
                script = "\n".join(body)
                blocks.append((None, [script]))
                if scripts is not None:
                    scripts.append(script)
            else:
                blocks.append((reason, join_continuations(body)))
        i += 1
    return blocks


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_continuations(body: list[str]) -> list[str]:
    commands, current = [], ""
    for line in body:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


def one_epoch(argv: list[str]) -> list[str]:
    """``argv`` with ``--epochs 1`` (replacing a given value) when it trains and is not --help."""
    if not any(a.endswith(TRAINING) for a in argv) or "--help" in argv:
        return argv
    if "--epochs" in argv:
        i = argv.index("--epochs")
        return [*argv[:i + 1], "1", *argv[i + 2:]]
    return [*argv, "--epochs", "1"]


def is_job(argv: list[str]) -> bool:
    """A job whose output is checked quiet: training, add-modality, a sweep, `xmr index` / `search`."""
    if "--help" in argv:
        return False
    return any(a.endswith(TRAINING) for a in argv) or (argv[0].endswith("xmr") and argv[1:2] in (
        ["index"], ["search"]))


def make_recipe(target: str) -> list[str]:
    """The Makefile's one-line recipe of ``target`` as argv ($(PY) -> .venv/bin/python)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    at = lines.index(next(line for line in lines if line.startswith(f"{target}:")))
    recipe = lines[at + 1].strip().replace("$(PY)", ".venv/bin/python")
    return shlex.split(recipe)


def as_argv(command: str) -> list[str] | None:
    """The argv a command line runs (comments dropped), or None for `make test` (this suite)."""
    argv = shlex.split(command, comments=True)
    if argv[:1] == ["make"]:
        assert argv[1:] in (["run"], ["test"]), f"README: unexpected make command {command!r}"
        return None if argv[1] == "test" else make_recipe("run")
    return argv


def test_readme_blocks_are_found_and_unrunnable_ones_say_why():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert len([b for b in blocks if b[0] is None]) >= 6
    assert all(reason for reason, _ in blocks if reason is not None)
    assert one_epoch(["x", "jobs/sweep.py", "--epochs", "50", "--name", "s"]) == [
        "x", "jobs/sweep.py", "--epochs", "1", "--name", "s"]
    assert make_recipe("run")[-2:] == ["jobs/train_xmedia.py", "--demo"]


@pytest.mark.slow
def test_readme_runs_top_to_bottom(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "jobs").symlink_to(ROOT / "jobs")
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    ran, scripts, quiet, printed = [], [], [], []
    for reason, commands in readme_blocks((ROOT / "README.md").read_text(), scripts):
        if reason is not None:
            continue
        for command in commands:
            if command in scripts:  # a server: started, waited for, queried, stopped by the block itself
                script = command.replace("PORT=8000", f"PORT={free_port()}")
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                                      capture_output=True, text=True, timeout=600)
                tail = (done.stdout + done.stderr)[-3000:]
                assert done.returncode == 0, f"README script failed:\n{script}\n{tail}"
                assert '"hits"' in done.stdout, done.stdout[-3000:]
                ran.append(command)
                continue
            argv = as_argv(command)
            if argv is None:
                continue
            argv = one_epoch(argv)
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            tail = (done.stdout + done.stderr)[-3000:]
            assert done.returncode == 0, f"README command failed: {command}\n{tail}"
            ran.append(command)
            if is_job(argv):
                lines = done.stdout.splitlines() + done.stderr.splitlines()
                assert_quiet(lines, command)
                assert not [x for x in lines if "PreemptionWatcher" in x], f"{command}\n{tail}"
                quiet.append(command)
                printed += lines
    assert len(ran) >= 12, ran
    assert len(quiet) >= 10, quiet  # make run, 4 trainings, add-modality, 2 sweeps, index, search
    assert any(re.fullmatch(r"\w[\w-]*: trained on 2 workers", x) for x in printed)  # the W=2 run
    assert any(x.startswith("trial 1/") for x in printed)  # a sweep's line per trial, no Tune console
    assert any(x.startswith("added         : mor") for x in printed)
    # What the README promises the commands leave behind.
    mfeat = json.loads((work / "runs/mfeat/run.json").read_text())
    assert mfeat["status"] == "finished" and "mor" in mfeat["modalities"]
    pairs = json.loads((work / "runs/pairs/run.json").read_text())
    assert pairs["status"] == "finished"
    assert (work / "sweeps/mfeat-sweep/best.json").is_file()
    assert json.loads((work / "runs/mfeat-tuned/run.json").read_text())["status"] == "finished"
