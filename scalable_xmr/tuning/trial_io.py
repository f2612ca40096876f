"""What every trial does around its training: its own directory, start log, Tune checkpoints.

A trial's directory is ``<sweep>/trials/<trial_id>/`` (absolute, on the sweep's storage): the
trial id survives ``Tuner.restore``, so a restored trial finds its directory again, and the
directory sits beside ``best.json`` where a user looks for it (Tune's own per-trial directory is a
staging path under /tmp/ray on the node). ``starts.jsonl`` gets one line per start of the trial
function: a trial that finished before an interrupted sweep was resumed has exactly one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from scalable_xmr.io import written

TRIALS_DIR = "trials"
STARTS_FILE = "starts.jsonl"
STATE_FILE = "trial_state.json"


def trial_dir(sweep_dir: str | os.PathLike, trial_id: str) -> Path:
    return Path(sweep_dir) / TRIALS_DIR / trial_id


def current_trial_id() -> str:
    from ray import tune

    return tune.get_context().get_trial_id()


def log_start(directory: Path, resumed_from: int | None) -> None:
    """Append one line per start of a trial function (pid, time, resumed epoch or null)."""
    directory.mkdir(parents=True, exist_ok=True)
    line = {"pid": os.getpid(), "time": time.time(), "resumed_from_epoch": resumed_from}
    with open(directory / STARTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    written(directory / STARTS_FILE)  # appended, not renamed: an object-storage sweep uploads it now


def read_starts(directory: Path) -> list[dict[str, Any]]:
    path = directory / STARTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def link_file(source: Path, target: Path) -> None:
    """``target`` -> ``source`` as a symlink (a copy where the file system has no symlinks)."""
    if target.exists() or target.is_symlink():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source)
    except OSError:  # pragma: no cover - e.g. a mounted share without symlinks
        shutil.copy2(source, target)


def install_tune_checkpoint(checkpoint_dir: Path) -> dict[str, Any] | None:
    """Make ``checkpoint_dir`` hold Tune's checkpoint of this trial; return its saved state.

    With a Tune checkpoint (a restarted or restored trial) its files replace whatever is in
    ``checkpoint_dir``. Without one the trial starts from scratch, so a stale local checkpoint
    (from a run that died before its first report) is removed: Tune's results and the model
    state must describe the same epochs.
    """
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return None
    with checkpoint.as_directory() as src:
        if Path(src).resolve() != checkpoint_dir.resolve():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            shutil.copytree(src, checkpoint_dir)
    state_path = checkpoint_dir / STATE_FILE
    return json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}


def report(metrics: dict[str, Any], checkpoint_dir: Path | None = None,
           state: dict[str, Any] | None = None) -> None:
    """``tune.report`` with, when ``checkpoint_dir`` is given, that directory as a checkpoint
    (``state`` is saved in it as JSON first, for what the model checkpoint does not hold)."""
    from ray import tune

    if checkpoint_dir is None:
        tune.report(metrics)
        return
    (checkpoint_dir / STATE_FILE).write_text(json.dumps(state or {}), encoding="utf-8")
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
