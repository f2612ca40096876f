"""Checksummed model and checkpoint files: a damaged file is named, never loaded."""

from __future__ import annotations

import pytest
import torch

from scalable_xmr.errors import CorruptFileError
from scalable_xmr.store import torchfile


def flip(path, offset: int, n: int = 64) -> None:
    """Overwrite ``n`` bytes at ``offset`` (the issue's bit-flipped checkpoint)."""
    raw = bytearray(path.read_bytes())
    raw[offset : offset + n] = bytes(255 - b for b in raw[offset : offset + n])
    path.write_bytes(bytes(raw))


def test_round_trip_and_damage_is_named(tmp_path):
    path = tmp_path / "last.pt"
    state = {"w": torch.arange(1000.0), "epoch": 3}
    torchfile.save(state, path)
    assert path.read_bytes().startswith(torchfile.MAGIC)
    back = torchfile.load(path)
    assert back["epoch"] == 3 and torch.equal(back["w"], state["w"])
    flip(path, len(path.read_bytes()) // 2)
    with pytest.raises(CorruptFileError, match=rf"{path}: checksum mismatch .* the file is corrupt"):
        torchfile.load(path)
    torchfile.save(state, path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        torchfile.load(path)
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="cannot be read"):
        torchfile.load(path)


def test_files_from_before_checksums_still_load(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "old.pt")
    assert torchfile.load(tmp_path / "old.pt") == {"epoch": 1}


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    path = tmp_path / "last.pt"
    torchfile.save_rotating({"epoch": 2}, path)
    torchfile.save_rotating({"epoch": 4}, path)
    assert torchfile.load(torchfile.previous(path)) == {"epoch": 2}
    assert torchfile.load_newest_good(path) == ({"epoch": 4}, path, None)
    flip(path, 60)
    state, used, why = torchfile.load_newest_good(path)
    assert state == {"epoch": 2} and used == torchfile.previous(path) and "checksum mismatch" in why
    flip(torchfile.previous(path), 60)
    with pytest.raises(CorruptFileError, match=rf"{path}: checksum mismatch"):
        torchfile.load_newest_good(path)
