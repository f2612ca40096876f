"""A branch member's checkpoint policy: ``checkpoints/last.pt`` and ``checkpoints/job.json``.

``last.pt`` is the :class:`~scalable_xmr.branch.trainer.PairTrainer` state (written rotating, so a
corrupt newest file falls back to the one before it); ``job.json`` the settings it belongs to and
the epochs it was resumed at. A resume with other settings is refused: the checkpoint would
continue another training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scalable_xmr.branch.config import stored_trainer
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_write_json, read_json
from scalable_xmr.store import torchfile


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def jsonable(value: Any) -> Any:
    """Tuples as lists, so settings compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class MemberCheckpoints:
    """``checkpoints/last.pt`` + ``job.json`` of the member in ``out_dir``.

    ``settings``: what the checkpoint belongs to (``trainer`` as a dict, ``model_config``,
    ``dataset_uri``, ``target_uri``); a resume compares it with the saved ones.
    """

    def __init__(self, out_dir: str | os.PathLike, settings: dict[str, Any]) -> None:
        self.dir = checkpoint_dir(out_dir)
        self.state = self.dir / "last.pt"
        self.meta_path = self.dir / "job.json"
        self.settings = settings
        self.resumed_at: list[int] = []
        self.recovered_from: str | None = None  # why the newest checkpoint was skipped on resume

    def resume(self, trainer: PairTrainer) -> None:
        if not self.state.is_file() and not torchfile.previous(self.state).is_file():
            return
        meta = read_json(self.meta_path) if self.meta_path.is_file() else {}
        saved = {k: meta.get(k) for k in self.settings}
        saved["trainer"] = stored_trainer(saved["trainer"])  # fields added since it was written
        if saved != jsonable(self.settings):
            raise InputError(
                f"{self.state}: checkpoint was written with other settings {saved}; delete "
                f"{self.dir} or train with the same settings"
            )
        self.recovered_from = trainer.load_checkpoint(self.state)
        self.resumed_at = [*meta.get("resumed_at", []), trainer.epoch]
        self._write_meta()

    def save(self, trainer: PairTrainer) -> None:
        if not self.meta_path.is_file():
            self._write_meta()
        trainer.save_checkpoint(self.state)

    def _write_meta(self) -> None:
        atomic_write_json(self.meta_path, {**jsonable(self.settings), "resumed_at": self.resumed_at})
