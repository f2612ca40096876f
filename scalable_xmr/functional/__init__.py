"""Pure maths: losses, retrieval metrics (mAP, PR, R@K); chunked functions of tensors."""

from scalable_xmr.functional.retrieval import (
    average_precision_per_query,
    mean_average_precision,
    precision_recall_curve,
    precision_scope_curve,
    recall_at_k,
    recall_at_k_folds,
)

__all__ = [
    "average_precision_per_query",
    "mean_average_precision",
    "precision_recall_curve",
    "precision_scope_curve",
    "recall_at_k",
    "recall_at_k_folds",
]
