"""A finished sweep's results: trial rows, the best trial per group, the summary table and plots.

Pure functions of plain rows (no Ray objects), so they are tested on hand-made rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalable_xmr.errors import InputError


@dataclass
class TrialRow:
    """One trial: its id, group (SDML modality; None for branch models), config and last result."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    error: str | None = None

    def score(self, metric: str) -> float:
        value = self.metrics.get(metric)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else float("nan")


# A population trial's config (each slot's values) and result (each slot's metrics) key. Its value
# stays "members": Tune stores it in tuner.pkl and the trials' results, which a --resume reads.
MEMBERS_KEY = "members"


def slot_id(trial_id: str, index: int) -> str:
    """The row id, directory name and MLflow run name of slot ``index`` of a population trial."""
    return f"{trial_id}-m{index}"


def slot_metrics(result: dict[str, Any], i: int) -> dict[str, Any]:
    """Slot ``i``'s metrics in a population trial's result (its own entry; {} when missing)."""
    slots = result.get(MEMBERS_KEY) or []
    return dict(slots[i]) if i < len(slots) else {}


def slot_rows(row: TrialRow) -> list[TrialRow]:
    """One row per configuration: ``row`` itself, or each slot of a population trial
    (tuning/population_trial.py) with its own config, metrics and error."""
    slots = row.config.get(MEMBERS_KEY)
    if slots is None:
        return [row]
    config = {k: v for k, v in row.config.items() if k != MEMBERS_KEY}
    shared = {k: v for k, v in row.metrics.items() if k != MEMBERS_KEY}
    out = []
    for i, values in enumerate(slots):
        name = slot_id(row.trial_id, i)
        metrics = {**shared, **slot_metrics(row.metrics, i), "trial_id": name}
        error = row.error or metrics.pop("error", None)
        out.append(TrialRow(name, {**config, **values}, metrics, row.group, error))
    return out


def rows_from_results(results, group_key: str | None) -> list[TrialRow]:
    """TrialRows of a Tune ``ResultGrid``: one per configuration (a population trial gives one
    per slot), errors kept as text."""
    rows = []
    for r in results:
        config = dict(r.config or {})
        trial_id = str(r.metrics.get("trial_id") or Path(str(r.path)).name)
        error = None if r.error is None else f"{type(r.error).__name__}: {r.error}".splitlines()[0]
        rows.extend(slot_rows(TrialRow(trial_id, config, dict(r.metrics or {}),
                                         config.get(group_key) if group_key else None, error)))
    return sorted(rows, key=lambda row: row.trial_id)


def ranked(rows: list[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """Rows with a finite score, best first (ties: lower trial id first)."""
    sign = -1.0 if mode == "max" else 1.0
    scored = [r for r in rows if r.error is None and not math.isnan(r.score(metric))]
    return sorted(scored, key=lambda r: (sign * r.score(metric), r.trial_id))


def best_per_group(rows: list[TrialRow], metric: str, mode: str,
                   prefer: str | None = None) -> dict[str | None, TrialRow]:
    """The best trial of every group (the whole sweep is one group for branch models).

    ``prefer``: a result key that only trials run to their end have (a branch trial's K
    evaluation); within a group, trials with it win over early-stopped ones.
    """
    best: dict[str | None, TrialRow] = {}
    order = ranked(rows, metric, mode)
    if prefer:
        order = [r for r in order if prefer in r.metrics] + [r for r in order if prefer not in r.metrics]
    for row in order:
        best.setdefault(row.group, row)
    groups = {r.group for r in rows}
    missing = sorted(str(g) for g in groups if g not in best)
    if missing:
        errors = [r.error for r in rows if r.error] or ["no trial reported the metric"]
        raise InputError(f"no usable trial for {', '.join(missing)} (metric {metric!r}): {errors[0]}")
    return best


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def top_table(rows: list[TrialRow], metric: str, mode: str, params: list[str],
              extra: tuple[str, ...] = (), n: int = 10, schedule: str | None = None) -> str:
    """A Markdown table of the top ``n`` trials of each group (all groups in one table).

    ``epochs``: the epochs a trial ran (fewer when ASHA stopped it); ``schedule``, when given: the
    training schedule every trial was set to run (``Backend.schedule``), a column of its own.
    """
    extra = tuple(k for k in extra if k != metric)
    header = ["rank", "trial", *(["group"] if any(r.group for r in rows) else []), *params, metric,
              *extra, "epochs", *(["schedule"] if schedule else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for group in dict.fromkeys(r.group for r in rows):
        members = ranked([r for r in rows if r.group == group], metric, mode)[:n]
        for i, r in enumerate(members, 1):
            cells = [str(i), r.trial_id, *([str(r.group)] if r.group else []),
                     *(_cell(r.config.get(p)) for p in params), _cell(r.score(metric)),
                     *(_cell(r.metrics.get(k)) for k in extra), _cell(r.metrics.get("training_iteration")),
                     *([schedule] if schedule else [])]
            lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.error]
    for r in failed:
        lines.append(f"\nfailed: {r.trial_id} ({r.group or ''}) {r.error}")
    return "\n".join(lines)


def epochs_trained(row: TrialRow) -> int | None:
    """The epochs a trial ran (Tune's ``training_iteration``: fewer than the sweep's when ASHA
    stopped it), or None when its result does not say."""
    value = row.metrics.get("training_iteration")
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None


def plot_metric_vs_params(rows: list[TrialRow], params: list[str], metric: str, mode: str, path: Path,
                          log_params: set[str], title: str, full_epochs: int | None = None) -> Path | None:
    """One panel per swept hyperparameter: the metric of every trial against its value, one
    series per group, each group's best marked (like SDML Fig. 5 / MTFN-RR Fig. 7b). Trials that
    ran fewer than ``full_epochs`` (default: the most any trial ran) are drawn as stopped early."""
    from scalable_xmr.tracking import plots  # matplotlib loads only when a sweep is plotted

    if not params:
        return None
    if full_epochs is None:
        full_epochs = max((e for e in map(epochs_trained, rows) if e is not None), default=None)
    groups = list(dict.fromkeys(r.group for r in rows))
    points = {param: {group: [(float(r.config[param]), r.score(metric), epochs_trained(r)) for r in rows
                              if r.group == group and param in r.config and not math.isnan(r.score(metric))]
                      for group in groups}
              for param in params}
    return plots.sweep_scatter(points, metric, mode, path, log_params, title, full_epochs)
