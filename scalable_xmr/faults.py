"""Fault injection for the test suite: one small hook, carried by no public request type.

With ``XMR_FAULTS`` set to the path of a JSON file ``{task name: epoch}`` (a modality, a branch
member), the process training that task dies -- ``os._exit``, as a lost node or an OOM kill looks to
Ray -- right after the checkpoint of that epoch (or the first checkpoint after it), once: a marker
beside the checkpoint keeps the restarted actor alive, so it resumes and finishes. Without
``XMR_FAULTS``, or with no entry for the task, nothing happens. The variable must be set before Ray
starts (actors inherit the environment then); the file may change between jobs.

``{"<task>/mid-epoch": epoch}`` instead kills the task during that epoch, after its first training
step (:func:`crash_mid_epoch`, a data-parallel rank: ``audio/rank1/mid-epoch``), so that the
checkpoint it resumes from is the one before that epoch.

``{"<task>/hold": epoch}`` stops the task right after the checkpoint of that epoch (or the first
one after it) until something kills it (:func:`hold_after_checkpoint`): a test that kills the
driver or sends Ctrl-C "mid-training" then knows training cannot have finished first, however
slow or loaded the machine. No marker: a job started without the plan resumes and finishes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "XMR_FAULTS"
MARKER = ".fault_injected"
MID_EPOCH = "/mid-epoch"  # a plan key's suffix: die during that epoch (crash_mid_epoch)
HOLD = "/hold"  # a plan key's suffix: stop after that epoch's checkpoint until killed


def crash_after_checkpoint(name: str, epoch: int, total: int, checkpoint_dir: str | os.PathLike,
                           grace_s: float = 0.0) -> None:
    """Die here, once, if the fault plan names ``name`` at ``epoch`` or earlier (never at the end),
    ``grace_s`` seconds after deciding to (a Ray Train worker: its controller takes the reported
    checkpoint in on its next polls, and a worker lost before then loses that checkpoint)."""
    fail_at = _planned(name)
    if fail_at is None or epoch < fail_at or epoch >= total:
        return
    _die_once(Path(checkpoint_dir), epoch, grace_s)


def crash_mid_epoch(name: str, epoch: int, marker_dir: str | os.PathLike, grace_s: float = 0.0) -> None:
    """Die here, once, if the fault plan names ``name + MID_EPOCH`` at ``epoch`` or earlier, where
    ``epoch`` (1-based) is the epoch in progress: called after each training step, the process dies
    after the first step of that epoch, its peers waiting for it in the next step's all-reduce."""
    fail_at = _planned(name + MID_EPOCH)
    if fail_at is None or epoch < fail_at:
        return
    _die_once(Path(marker_dir), epoch, grace_s)


def hold_after_checkpoint(name: str, epoch: int) -> None:
    """Sleep here until killed if the fault plan names ``name + HOLD`` at ``epoch`` or earlier."""
    hold_at = _planned(name + HOLD)
    if hold_at is None or epoch < hold_at:
        return
    while True:
        time.sleep(60)


def _planned(name: str) -> int | None:
    """The epoch the fault plan gives ``name``; None without a plan or an entry."""
    plan_path = os.environ.get(ENV)
    if not plan_path:
        return None
    try:
        return json.loads(Path(plan_path).read_text()).get(name)
    except (OSError, ValueError):
        return None


def _die_once(marker_dir: Path, epoch: int, grace_s: float) -> None:
    marker = marker_dir / MARKER
    if not marker.exists():
        marker_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{os.getpid()} {epoch}\n")
        time.sleep(grace_s)
        os._exit(1)
