"""scalable_xmr: distributed cross-modal retrieval training (SDML, branch models, re-ranking).

``scalable_xmr.load_run(uri)`` opens a finished run for encoding and search (docs/search.md); it is
imported on first use, so ``import scalable_xmr`` (and ``xmr --help``) stays free of torch.
"""

import importlib
from typing import Any

from scalable_xmr.version import __version__

__all__ = ["__version__"]  # and the lazy attributes below

# Names imported on first use (PEP 562) -> the module that defines them; tests/test_architecture.py
# reads this table, so an import of one counts as an import of that module's package.
_LAZY_ATTRIBUTES = {"load_run": "scalable_xmr.serving"}  # serving loads torch and pyarrow


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'scalable_xmr' has no attribute {name!r}")
