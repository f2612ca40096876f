"""JSON files: written atomically (``io.atomic``), read with one line naming a missing or bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io.atomic import atomic_write_text


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:

    p = Path(path)
    if not p.is_file():
        raise MissingError(f"{p}: file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid JSON ({e})") from e
