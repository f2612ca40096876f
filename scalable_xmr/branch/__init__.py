"""The branch path: image-text matching models (VSE++, MTFN, MMCA, VSA) and re-ranking.

config (training options), trainer (one model's loop), scoring (chunked similarity matrices),
evaluate (R@K, the K/K' grid), member (train + score one model: what an actor or a trial runs),
job (the train-pairs job), report (metrics.json, the R@K table, MLflow).
"""
