"""Hyperparameter sweeps with Ray Tune.

- :mod:`.space`: the models' hyperparameters, domains, default spaces, ``--grid`` / ``--range``.
- :mod:`.backend`: what the runner asks of a model family; :mod:`.sdml_backend` /
  :mod:`.branch_backend` and their trainables :mod:`.sdml_trial` / :mod:`.branch_trial`.
- :mod:`.request`: :class:`SweepRequest` and its checks at the door.
- :mod:`.sweep`: :func:`run_sweep` -- Tune, ASHA, resources, resume, best.json, summary.
- :mod:`.tracking`: the MLflow parent/child runs of a sweep (a Tune callback on the driver).
"""

from scalable_xmr.tuning.request import SweepRequest
from scalable_xmr.tuning.space import MODELS, SearchSpace, build_space, parse_grid, parse_range
from scalable_xmr.tuning.sweep import SweepSummary, run_sweep

__all__ = ["MODELS", "SearchSpace", "SweepRequest", "SweepSummary", "build_space", "parse_grid",
           "parse_range", "run_sweep"]
