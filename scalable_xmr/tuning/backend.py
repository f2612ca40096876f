"""What a sweep asks of a model family (the :class:`Backend` protocol), and what backends share.

The runner (``tuning/sweep.py``) knows nothing of SDML or branch models: it drives a backend
(``sdml_backend.SDMLBackend``, ``branch_backend.BranchBackend``) through these methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from scalable_xmr.tuning.results import TrialRow


class Backend(Protocol):
    """The model-specific half of a sweep, on the driver.

    ``info`` is the JSON-able description :meth:`prepare` writes into ``sweep.json`` on the first
    run; a resumed sweep rebuilds its trainable from it alone (the resumed command line need not
    repeat the original flags).
    """

    group_key: str | None  # trials are ranked within groups of this config key (SDML: "modality")
    metrics: dict[str, tuple[str, str]]  # --metric name -> (reported key, "min" | "max")
    default_metric: str
    table_extra: tuple[str, ...]  # reported keys shown in the summary table
    complete_key: str | None  # a key only a trial that ran to its end reports (None: any trial)

    def check(self, req: Any) -> Any:
        """Cheap checks of a new sweep's request against its dataset (it exists, has the
        modalities or splits asked for), run before Ray starts; returns what :meth:`prepare`
        needs of what it read (``checked``)."""
        ...

    def prepare(self, req: Any, sweep_dir: Path, space: Any, checked: Any) -> dict[str, Any]: ...

    def n_groups(self, info: dict[str, Any]) -> int: ...

    def schedule(self, info: dict[str, Any]) -> str:
        """The training schedule every trial runs, in words (the summary table, MLflow params):
        how much of the full training, and the lr steps (a branch trial runs its model's
        schedule compressed, ``branch.config.compressed``)."""
        ...

    def final_schedule(self, info: dict[str, Any]) -> str:
        """The schedule the training job runs from best.json with no other flag (the full one)."""
        ...

    def param_space(self, tuned: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]: ...

    def trainable(self, info: dict[str, Any], sweep_dir: Path) -> Any: ...

    def best_json(self, best: dict[Any, TrialRow], info: dict[str, Any], sweep_dir: Path,
                  metric: str) -> dict[str, Any]: ...

    def parent_metrics(self, best: dict[str, Any]) -> dict[str, float]: ...

    def summary_line(self, best: dict[str, Any]) -> str: ...


def trial_resources(info: dict[str, Any], gpu_share: float = 1.0) -> dict[str, float]:
    """Tune resources of one trial: ``cpus_per_trial`` CPUs and a ``gpu_share`` of its GPUs."""
    res = {"cpu": float(info["cpus_per_trial"])}
    if info["gpus_per_trial"] > 0:
        res["gpu"] = float(info["gpus_per_trial"]) * gpu_share
    return res
