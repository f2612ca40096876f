"""A run's training state: the ``checkpoints/`` of its modalities or members, kept only as long as
something may resume from it (docs/run-store.md, "What a finished run keeps").

A finished run keeps each unit's ``model.pt``, embeddings or similarities, logs, metrics and plots;
the jobs call :func:`drop` once the run is finished (its ``run.json`` says so) unless
``--keep-checkpoints`` is given. A sweep calls it on its trials' directories when it finishes.

Only our own files go, by name (:data:`STATE_FILES`), and the whole of a data-parallel modality's
Ray Train run (:data:`RAY_TRAIN_DIR`, every file of which is training state); a directory is
removed only once nothing else is left in it. Every removal under an object-storage run's mirror is
repeated on the bucket, object by object (``io.written``, store/remote.py), so the bucket holds what
the mirror holds; a removal that fails there raises, and the caller reports the state as not removed.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scalable_xmr.errors import InputError
from scalable_xmr.io import fileops
from scalable_xmr.store.torchfile import previous

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
# What a checkpoints/ directory of ours holds: the newest state and the one before it
# (torchfile.save_rotating), a branch member's settings (branch/checkpoints.py), a sweep trial's Tune
# state (tuning/trial_io.py).
STATE_FILES = (LAST, previous(LAST).name, "job.json", "trial_state.json")
# Under a checkpoints/ directory: a data-parallel modality's Ray Train run (sdml/data_parallel.py):
# its checkpoint_<time>/ folders and Ray's own bookkeeping, all of it training state.
RAY_TRAIN_DIR = "ray-train"


def _tree_files(directory: Path) -> list[Path]:
    """Every file under ``directory / RAY_TRAIN_DIR`` (none when it is absent)."""
    root = directory / RAY_TRAIN_DIR
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.is_dir() else []


@dataclass(frozen=True)
class Dropped:
    """What :func:`drop` removed."""

    files: int
    bytes: int

    def describe(self) -> str:
        return f"{self.files} file{'' if self.files == 1 else 's'}, {human_size(self.bytes)}"


def human_size(n: int) -> str:
    """``1.5 GB``, ``190 MB``, ``12 kB``, ``800 B`` (powers of 1000, as ``du --si``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def state_files(directories: Iterable[Path], files: Iterable[Path] = ()) -> list[Path]:
    """Our training-state files that exist under ``directories`` (checkpoints/ folders), and those
    of ``files`` (loose ones, e.g. the joint strategy's optimizer state) that exist."""
    directories = [Path(d) for d in directories]
    out = [d / name for d in directories for name in STATE_FILES if (d / name).is_file()]
    out += [p for d in directories for p in _tree_files(d)]
    return out + [Path(f) for f in files if Path(f).is_file()]


def size(directories: Iterable[Path], files: Iterable[Path] = ()) -> int:
    """Bytes of :func:`state_files`."""
    return sum(p.stat().st_size for p in state_files(directories, files))


def drop(directories: Iterable[Path], files: Iterable[Path] = ()) -> Dropped:
    """Remove our training-state files in each of ``directories`` and the loose ``files``, then
    each directory left empty. Under an object-storage mirror each name is also deleted from the
    bucket, whether the mirror holds it or not (a checkpoint an actor on another node uploaded).
    Idempotent: a second call removes nothing and succeeds."""
    directories = [Path(d) for d in directories]
    names = [d / name for d in directories for name in STATE_FILES] + [Path(f) for f in files]
    names += [p for d in directories for p in _tree_files(d)]
    # The Ray Train run itself: an object-storage run keeps it in the bucket only (its storage_path
    # is the bucket's key, sdml/data_parallel.py), so the mirror may not list its files.
    names += [d / RAY_TRAIN_DIR for d in directories]
    n, total = 0, 0
    for path in names:
        if path.is_file() or path.is_symlink():  # (a bucket-only Ray Train run is not counted)
            total += path.lstat().st_size
            n += 1
        fileops.remove(path)  # gone here: deleted in the bucket too (nothing outside a mirror)
    for d in directories:
        tree = d / RAY_TRAIN_DIR
        folders = sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for folder in [*folders, tree, d]:  # deepest first
            with contextlib.suppress(OSError):  # not empty (a file that is not ours) or absent: kept
                os.rmdir(folder)
    return Dropped(n, total)


def after_finish(uri: str, directories: Iterable[Path], keep: bool, files: Iterable[Path] = (),
                 where: str = "checkpoints/") -> str:
    """What every job does with a run's training state once the run is finished (run.json says
    so): :func:`drop` it, unless ``keep`` (``--keep-checkpoints``). Returns the job footer's line
    (``where`` names the folders in it). A failure to remove (a bucket refusing a delete) leaves the
    run finished: a warning naming what may be left, never an error."""
    directories, files = list(directories), list(files)
    if keep:
        return f"kept (--keep-checkpoints): {human_size(size(directories, files))} under {where}"
    try:
        dropped = drop(directories, files)
    except OSError as e:
        warnings.warn(f"{uri}: the run is finished but its training state ({where}) could not all be "
                      f"removed ({e}); what is left can be deleted by hand", stacklevel=2)
        return f"not all removed ({e})"
    if not dropped.files:
        return "none left"
    return f"removed {dropped.describe()} ({where}; --keep-checkpoints keeps them)"


def refuse_keep_on_finished(uri: str, directories: Iterable[Path]) -> None:
    """``--keep-checkpoints`` with ``--resume`` of a finished run, which a job only reads: one line
    when the run's training state is gone (removed when it finished), since nothing can keep it
    now. A finished run that kept its state (made with the flag) passes: there is nothing to do."""
    if not state_files(directories):
        raise InputError(f"--keep-checkpoints: {uri} is finished and its training state was removed when "
                         "it finished; --resume of a finished run only reads it, so there is nothing to keep "
                         "(train it again with --overwrite --keep-checkpoints to keep checkpoints)")
