"""scalable_xmr: distributed cross-modal retrieval training (SDML, branch models, re-ranking).

``scalable_xmr.load_run(uri)`` opens a finished run for encoding and search (docs/search.md); it is
imported on first use, so ``import scalable_xmr`` (and ``xmr --help``) stays free of torch.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__"]  # and load_run, resolved lazily by __getattr__ below


def __getattr__(name: str) -> Any:
    if name == "load_run":  # PEP 562: the serving package (torch, pyarrow) loads only when asked
        return importlib.import_module("scalable_xmr.serving").load_run
    raise AttributeError(f"module 'scalable_xmr' has no attribute {name!r}")
