"""Schedulers: ASHA early stopping, one independent ASHA per group for separable SDML sweeps.

An SDML sweep mixes trials of different modalities whose metrics are not comparable (an audio
network's anchor mAP says nothing about a text network's), and the best configuration of each
modality is chosen independently. One ASHA over all trials would stop the weaker modality's trials
for being on a weaker modality, so :class:`GroupedASHA` runs one ASHA per value of
``config[group_key]``: every rung compares trials of the same modality only.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

SCHEDULERS = ("asha", "fifo")


def asha_kwargs(max_epochs: int) -> dict[str, Any]:
    """ASHA on epochs: first rung after 1 epoch (or a quarter of the run), halving at each rung."""
    return {"time_attr": "training_iteration", "max_t": max(max_epochs, 1),
            "grace_period": max(1, max_epochs // 4), "reduction_factor": 2}


class GroupedASHA(FIFOScheduler):
    """One :class:`AsyncHyperBandScheduler` per value of ``trial.config[group_key]``."""

    def __init__(self, group_key: str, **asha: Any):
        super().__init__()
        self.group_key, self.asha = group_key, asha
        self._metric: str | None = None
        self._mode: str | None = None
        self._groups: dict[Any, AsyncHyperBandScheduler] = {}
        self._added: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        for sub in self._groups.values():
            sub.set_search_properties(metric, mode, **spec)
        return True

    def _sub(self, trial) -> AsyncHyperBandScheduler:
        group = trial.config.get(self.group_key)
        if group not in self._groups:
            sub = AsyncHyperBandScheduler(**self.asha)
            sub.set_search_properties(self._metric, self._mode)
            self._groups[group] = sub
        return self._groups[group]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._sub(trial).on_trial_add(tune_controller, trial)
        self._added.add(trial.trial_id)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id not in self._added:  # a trial restored from an earlier run of the sweep
            self.on_trial_add(tune_controller, trial)
        return self._sub(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._added:
            self._added.discard(trial.trial_id)
            self._sub(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if trial.trial_id in self._added:
            self._added.discard(trial.trial_id)
            self._sub(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "GroupedASHA: " + "; ".join(f"{g}: {s.debug_string()}" for g, s in self._groups.items())


def make_scheduler(name: str, max_epochs: int, group_key: str | None = None) -> TrialScheduler:
    """``asha`` (per group when ``group_key`` is given) or ``fifo`` (run every trial to the end)."""
    if name == "fifo":
        return FIFOScheduler()
    if group_key is not None:
        return GroupedASHA(group_key, **asha_kwargs(max_epochs))
    return AsyncHyperBandScheduler(**asha_kwargs(max_epochs))
