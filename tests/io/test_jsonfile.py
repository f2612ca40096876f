"""JSON files (io/jsonfile.py): written atomically, read with one line naming a bad file."""

from __future__ import annotations

import pytest

from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.io import atomic_write_json, read_json


def test_round_trip(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert read_json(tmp_path / "x.json") == {"a": [1, 2]}
    assert (tmp_path / "x.json").read_text().endswith("}\n")


@pytest.mark.parametrize(("content", "error", "match"), [
    (None, MissingError, "x.json: file not found"),
    ("{", InputError, "x.json: not valid JSON"),
    (b"\xff", InputError, "x.json: not valid JSON"),
])
def test_bad_files_are_one_line(tmp_path, content, error, match):
    if isinstance(content, str):
        (tmp_path / "x.json").write_text(content)
    elif content is not None:
        (tmp_path / "x.json").write_bytes(content)
    with pytest.raises(error, match=match):
        read_json(tmp_path / "x.json")
