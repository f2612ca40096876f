"""The command-line reference: every ``xmr`` command's ``--help``, as Markdown.

``python -m scalable_xmr.cli.reference > docs/cli.md`` writes docs/cli.md; a test checks that the
file is current, so the reference in the repo never drifts from the parsers. The scripts in jobs/
take exactly the flags of their subcommand (train_xmedia.py = ``xmr train``, add_modality.py =
``xmr add-modality``, train_pairs.py = ``xmr train-pairs``, sweep.py = ``xmr sweep``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

from scalable_xmr.cli import build_parser

WIDTH = 100  # help is wrapped at a fixed width so the file does not depend on the terminal
JOBS = {"train": "jobs/train_xmedia.py", "add-modality": "jobs/add_modality.py",
        "train-pairs": "jobs/train_pairs.py", "sweep": "jobs/sweep.py"}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...],
                                                                                          argparse.ArgumentParser]]:
    """(command words, parser) of ``parser`` and of every subcommand below it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def render() -> str:
    """docs/cli.md's text."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH + 2)  # argparse wraps at COLUMNS - 2
    try:
        parts = [
            "# Command-line reference\n",
            "Generated from the parsers by `python -m scalable_xmr.cli.reference > docs/cli.md` (a test "
            "checks it is current). The scripts in `jobs/` take the same flags as their subcommand: "
            + ", ".join(f"`{job}` = `xmr {cmd}`" for cmd, job in JOBS.items()) + ".\n",
        ]
        for words, parser in _commands(build_parser(), ("xmr",)):
            parser.prog = " ".join(words)
            parts.append(f"## {' '.join(words)}\n\n```text\n{parser.format_help().rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


if __name__ == "__main__":
    sys.stdout.write(render())
