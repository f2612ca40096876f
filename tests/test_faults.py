"""The fault-injection hook: dies once, only where the plan says, and never without a plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scalable_xmr import faults

CALL = "from scalable_xmr import faults; faults.crash_after_checkpoint({!r}, {}, {}, {!r}); print('alive')"
MID = "from scalable_xmr import faults; faults.crash_mid_epoch({!r}, {}, {!r}); print('alive')"


def run(tmp_path, plan, name, epoch, total=10, mid_epoch=False):
    env = {"PATH": "/usr/bin:/bin"}
    if plan is not None:
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        env[faults.ENV] = str(tmp_path / "plan.json")
    if mid_epoch:
        code = MID.format(name, epoch, str(tmp_path))
    else:
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


def test_a_mid_epoch_fault_dies_once_during_its_epoch_only_under_its_own_key(tmp_path):
    def mid(plan, epoch):
        return run(tmp_path, plan, "audio/rank1", epoch, mid_epoch=True)

    assert mid({"audio/rank1": 3}, 3).stdout == "alive\n"  # the after-checkpoint key is not this one
    assert mid({"audio/rank1/mid-epoch": 3}, 2).stdout == "alive\n"  # before the epoch
    assert mid({"audio/rank1/mid-epoch": 3}, 3).returncode == 1  # during it
    assert (tmp_path / faults.MARKER).read_text().split()[1] == "3"
    assert mid({"audio/rank1/mid-epoch": 3}, 3).stdout == "alive\n"  # the restarted worker lives on


HOLD = "from scalable_xmr import faults; faults.hold_after_checkpoint({!r}, {}); print('alive')"


def test_a_hold_stops_the_task_after_its_epoch_until_it_is_killed(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"image/hold": 2}))
    env = {"PATH": "/usr/bin:/bin", faults.ENV: str(tmp_path / "plan.json")}

    def hold(name, epoch, timeout):
        return subprocess.run([sys.executable, "-c", HOLD.format(name, epoch)], env=env,
                              capture_output=True, text=True, timeout=timeout)

    assert hold("image", 1, 60).stdout == "alive\n"  # before the epoch
    assert hold("text", 5, 60).stdout == "alive\n"  # another task
    assert run(tmp_path, {"image/hold": 2}, "image", 5).stdout == "alive\n"  # not a crash key
    with pytest.raises(subprocess.TimeoutExpired):  # at the epoch (and after): held until killed
        hold("image", 3, 5)
    assert not (tmp_path / faults.MARKER).exists()
