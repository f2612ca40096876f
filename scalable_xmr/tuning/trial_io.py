"""What every trial does around its training: its own directory, start log, Tune checkpoints.

A trial's directory is ``<sweep>/trials/<trial_id>/`` (absolute, on the sweep's storage): the
trial id survives ``Tuner.restore``, so a restored trial finds its directory again, and the
directory sits beside ``best.json`` where a user looks for it (Tune's own per-trial directory is a
staging path under /tmp/ray on the node). ``starts.jsonl`` gets one line per start of the trial
function: a trial that finished before an interrupted sweep was resumed has exactly one.

A trial's training state is stored once: Tune's copy (``<sweep>/<Tune trial>/checkpoint_*/``, what
a restarted or restored trial resumes from). The trial writes its checkpoint into its own
``checkpoints/`` only to hand it to ``tune.report``, which copies it into Tune's storage before it
returns; :func:`report` then removes the trial's files. When the sweep has finished,
:func:`drop_sweep_state` removes Tune's copies too (and what a trial stopped in mid-report left):
a finished sweep keeps each trial's selected ``model.pt``, embeddings, logs and results.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from scalable_xmr.io import fileops
from scalable_xmr.store import training_state

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
    fileops.append_text(directory / STARTS_FILE, json.dumps(line) + "\n")


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
    if checkpoint is not None and checkpoint.filesystem.get_file_info(checkpoint.path).type == \
            pafs.FileType.NotFound:
        checkpoint = None  # dropped when its sweep finished (drop_sweep_state): a re-run starts afresh
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
    # Tune copied the directory into its storage before report returned (Ray 2.60,
    # StorageContext.persist_current_checkpoint): that copy is the one a resume reads. Ours goes, so
    # the state is stored once (and a rotated last.pt.prev never forms beside it).
    training_state.drop([checkpoint_dir])


def drop_sweep_state(sweep_dir: Path) -> training_state.Dropped:
    """A finished sweep's training state: Tune's checkpoint folders (``<sweep>/<Tune trial>/
    checkpoint_NNNNNN/``) and whatever a trial left in its own ``checkpoints/`` (one stopped by
    the scheduler inside its last report). Each trial's model.pt, embeddings, logs and Tune's
    results stay. Under an object-storage mirror the bucket's copies go too."""
    tune_dirs = sorted(p for p in sweep_dir.glob("*/checkpoint_[0-9]*")
                       if p.is_dir() and p.parent.name != TRIALS_DIR)
    n, total = 0, 0
    for d in tune_dirs:
        files = [f for f in d.rglob("*") if f.is_file()]
        n, total = n + len(files), total + sum(f.stat().st_size for f in files)
        fileops.remove(d, missing_ok=False)  # gone here: deleted in the bucket too
    ours = sorted({*sweep_dir.glob(f"{TRIALS_DIR}/*/{training_state.CHECKPOINT_DIR}"),
                   *sweep_dir.glob(f"{TRIALS_DIR}/*/modalities/*/{training_state.CHECKPOINT_DIR}")})
    left = training_state.drop(ours)
    return training_state.Dropped(n + left.files, total + left.bytes)
