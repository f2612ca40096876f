"""Fault injection for the test suite: one small hook, carried by no public request type.

With ``XMR_FAULTS`` set to the path of a JSON file ``{task name: epoch}`` (a modality, a branch
member), the process training that task dies -- ``os._exit``, as a lost node or an OOM kill looks to
Ray -- right after the checkpoint of that epoch (or the first checkpoint after it), once: a marker
beside the checkpoint keeps the restarted actor alive, so it resumes and finishes. Without
``XMR_FAULTS``, or with no entry for the task, nothing happens. The variable must be set before Ray
starts (actors inherit the environment then); the file may change between jobs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "XMR_FAULTS"
MARKER = ".fault_injected"


def crash_after_checkpoint(name: str, epoch: int, total: int, checkpoint_dir: str | os.PathLike,
                           grace_s: float = 0.0) -> None:
    """Die here, once, if the fault plan names ``name`` at ``epoch`` or earlier (never at the end),
    ``grace_s`` seconds after deciding to (a Ray Train worker: its controller takes the reported
    checkpoint in on its next polls, and a worker lost before then loses that checkpoint)."""
    plan_path = os.environ.get(ENV)
    if not plan_path:
        return
    try:
        fail_at = json.loads(Path(plan_path).read_text()).get(name)
    except (OSError, ValueError):
        return
    if fail_at is None or epoch < fail_at or epoch >= total:
        return
    marker = Path(checkpoint_dir) / MARKER
    if not marker.exists():
        marker.write_text(f"{os.getpid()} {epoch}\n")
        time.sleep(grace_s)
        os._exit(1)
