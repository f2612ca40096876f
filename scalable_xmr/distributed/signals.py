"""Ctrl-C belongs to the driver.

A terminal sends SIGINT to the whole foreground process group: the driver and, when it started a
private local Ray, every Ray worker it spawned. A training actor or Tune trial that died of
KeyboardInterrupt would look finished or failed (Tune marks such trials TERMINATED, so a resumed
sweep never reran them). Workers therefore ignore SIGINT (``workers_ignore_ctrl_c`` runs in each
worker process as Ray's ``worker_process_setup_hook``); the driver alone reacts: the jobs record
what they kept and how to resume, Tune checkpoints its experiment state and stops the trials.
"""

from __future__ import annotations

import signal

SETUP_HOOK = "scalable_xmr.distributed.signals.workers_ignore_ctrl_c"


def workers_ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
