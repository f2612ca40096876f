"""Retrieval metrics: mAP and PR / precision-scope curves (SDML), R@K (VSE++).

Pure functions of arrays or tensors (NumPy or torch in, Python floats / NumPy arrays out).
Memory stays bounded: the query x gallery similarity is built one chunk of queries at a time
(never more than one ``(chunk_size, n_gallery)`` block), and R@K walks a given similarity matrix
in chunks of rows / columns. Every ranking is *stable*: descending score, ties broken by the lower
gallery index, so results are deterministic and match a stable NumPy reference exactly.

One module per concept: ``checks`` (input checks), ``ranking`` (stable orders), ``average_precision``
(mAP), ``curves`` (PR and precision-scope) and ``recall`` (R@K); the public API is re-exported here.
"""

from scalable_xmr.functional.retrieval.average_precision import (
    NO_RELEVANT_MODES,
    average_precision_per_query,
    check_no_relevant,
    mean_average_precision,
)
from scalable_xmr.functional.retrieval.checks import ArrayLike as ArrayLike  # type alias, not in __all__
from scalable_xmr.functional.retrieval.checks import as_float_matrix
from scalable_xmr.functional.retrieval.curves import (
    PAPER_SCOPES,
    precision_recall_curve,
    precision_scope_curve,
    scope_levels,
)
from scalable_xmr.functional.retrieval.ranking import (
    stable_argsort_desc,
    stable_rank,
    stable_topk_indices,
)
from scalable_xmr.functional.retrieval.recall import recall_at_k, recall_at_k_folds

# doctest.testmod(<this package>) collects only functions defined in the module itself: list the
# re-exported ones whose docstrings hold an executed ``Example:``.
__test__ = {"mean_average_precision": mean_average_precision, "recall_at_k": recall_at_k}

__all__ = [
    "NO_RELEVANT_MODES",
    "PAPER_SCOPES",
    "as_float_matrix",
    "average_precision_per_query",
    "check_no_relevant",
    "mean_average_precision",
    "precision_recall_curve",
    "precision_scope_curve",
    "scope_levels",
    "recall_at_k",
    "recall_at_k_folds",
    "stable_argsort_desc",
    "stable_rank",
    "stable_topk_indices",
]
