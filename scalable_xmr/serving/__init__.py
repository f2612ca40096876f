"""Use a trained run: load it, encode new items, search across modalities, index and serve.

- :func:`load_run` -> :class:`TrainedRun` (``run``): encode with the stored normaliser + encoder,
  the stored embeddings of a split, exact search (``search``: chunked matmul + top-k).
- ``branch``: search with an image-text branch model (VSE, VSA, MMCA exact or two-stage, MTFN fusion).
- ``index``: index tables (id, embedding) built with Ray Data, and their sidecar.
- ``ann``: optional faiss indexes (flat, IVF, HNSW) behind the same search interface.
- ``preflight``: what the commands check before torch or Ray load (run.json, sidecars, port, --out).
- ``schema`` / ``service`` / ``http``: the request contract, the Ray-free searcher and its routes.
- ``app``: the Ray Serve application (``xmr serve``).

Only ``index`` and ``app`` import Ray, and only when called. The names below load on first use
(PEP 562), so ``serving.preflight`` runs its checks without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scalable_xmr.serving.run import Gallery, TrainedRun, load_run
    from scalable_xmr.serving.search import SearchResult, exact_topk

__all__ = ["Gallery", "SearchResult", "TrainedRun", "exact_topk", "load_run"]
_WHERE = {"Gallery": "run", "TrainedRun": "run", "load_run": "run", "SearchResult": "search",
          "exact_topk": "search"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"scalable_xmr.serving.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'scalable_xmr.serving' has no attribute {name!r}")
