"""The user docs live in the repo, say what the code does, and point nowhere outside the repo."""

from __future__ import annotations

import re
from pathlib import Path

from scalable_xmr.cli.reference import render

ROOT = Path(__file__).resolve().parents[1]
DOCS = [*(ROOT / name for name in ("README.md", "BENCHMARKS.md", "RELIABILITY.md")),
        *sorted((ROOT / "docs").glob("*.md"))]


def test_cli_reference_is_current():
    """docs/cli.md is generated from the parsers; regenerate it with the command it names."""
    assert (ROOT / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `.venv/bin/python -m scalable_xmr.cli.reference > docs/cli.md`")


def test_reference_covers_every_command_and_flag():
    text = render()
    for command in ("xmr train", "xmr add-modality", "xmr train-pairs", "xmr sweep", "xmr data mfeat",
                    "xmr projection create"):
        assert f"## {command}\n" in text
    for flag in ("--batch-size", "--strategy", "--t2i-groups", "--top-k-no-relevant", "--ensemble"):
        assert flag in text


def test_docs_link_only_to_files_in_the_repo():
    for doc in DOCS:
        text = doc.read_text()
        for outside in ("../shared", "DESIGN.md", "RAY_NOTES.md", "STYLE.md"):  # not in a user's clone
            assert outside not in text, f"{doc.name} points outside the repo: {outside}"
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_readme_names_the_docs():
    readme = (ROOT / "README.md").read_text()
    for name in ("docs/data.md", "docs/run-store.md", "docs/metrics.md", "docs/cli.md"):
        assert f"]({name})" in readme
