"""Use a trained run: load it, encode new items, search across modalities, index and serve.

- :func:`load_run` -> :class:`TrainedRun` (``run``): encode with the stored normaliser + encoder,
  the stored embeddings of a split, exact search (``search``: chunked matmul + top-k).
- ``branch``: search with an image-text branch model (VSE, VSA, MMCA re-scoring, MTFN fusion).
- ``index``: index tables (id, embedding) built with Ray Data, and their sidecar.
- ``ann``: optional faiss indexes (flat, IVF, HNSW) behind the same search interface.
- ``app``: the Ray Serve application (``xmr serve``).

Only ``index`` and ``app`` import Ray, and only when called.
"""

from scalable_xmr.serving.run import Gallery, TrainedRun, load_run
from scalable_xmr.serving.search import SearchResult, exact_topk

__all__ = ["Gallery", "SearchResult", "TrainedRun", "exact_topk", "load_run"]
