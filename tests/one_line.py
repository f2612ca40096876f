"""The check every bad-input test makes: exit 2, one ``xmr: error`` line holding the message."""

from __future__ import annotations


def fails_one_line(main, capsys, argv: list[str], message: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    lines = [line for line in err.splitlines() if line.startswith("xmr: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return err
