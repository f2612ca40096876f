"""docs/search.md's Python examples run, on the session's small trained run, and print what they say."""

from __future__ import annotations

import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "search.md"


def test_docs_search_examples_run(sdml_run, one_torch_thread):
    result = doctest.testfile(str(DOC), module_relative=False, globs={"run_dir": sdml_run},
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0, result
