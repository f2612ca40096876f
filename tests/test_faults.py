"""The fault-injection hook: dies once, only where the plan says, and never without a plan."""

from __future__ import annotations

import json
import subprocess
import sys

from scalable_xmr import faults

CALL = "from scalable_xmr import faults; faults.crash_after_checkpoint({!r}, {}, {}, {!r}); print('alive')"


def run(tmp_path, plan, name, epoch, total=10):
    env = {"PATH": "/usr/bin:/bin"}
    if plan is not None:
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        env[faults.ENV] = str(tmp_path / "plan.json")
    code = CALL.format(name, epoch, total, str(tmp_path))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_dies_once_after_the_planned_epoch(tmp_path):
    assert run(tmp_path, {"image": 2}, "image", 1).stdout == "alive\n"  # before the epoch
    assert run(tmp_path, {"image": 2}, "image", 2).returncode == 1  # at it: os._exit(1)
    assert (tmp_path / faults.MARKER).is_file()
    assert run(tmp_path, {"image": 2}, "image", 3).stdout == "alive\n"  # the restart lives on


def test_no_plan_other_task_or_last_epoch_never_dies(tmp_path):
    assert run(tmp_path, None, "image", 5).stdout == "alive\n"
    assert run(tmp_path, {"image": 2}, "audio", 5).stdout == "alive\n"
    assert run(tmp_path, {"image": 2}, "image", 10, total=10).stdout == "alive\n"  # the last epoch
    assert not (tmp_path / faults.MARKER).exists()
