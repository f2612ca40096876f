"""A finished sweep's results: trial rows, the best trial per group, the summary table and plots.

Pure functions of plain rows (no Ray objects), so they are tested on hand-made rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalable_xmr.errors import InputError
from scalable_xmr.io import atomic_path


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


def rows_from_results(results, group_key: str | None) -> list[TrialRow]:
    """TrialRows of a Tune ``ResultGrid`` (one per trial, errors kept as text)."""
    rows = []
    for r in results:
        config = dict(r.config or {})
        trial_id = str(r.metrics.get("trial_id") or Path(str(r.path)).name)
        error = None if r.error is None else f"{type(r.error).__name__}: {r.error}".splitlines()[0]
        rows.append(TrialRow(trial_id, config, dict(r.metrics or {}),
                             config.get(group_key) if group_key else None, error))
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
              extra: tuple[str, ...] = (), n: int = 10) -> str:
    """A Markdown table of the top ``n`` trials of each group (all groups in one table)."""
    extra = tuple(k for k in extra if k != metric)
    header = ["rank", "trial", *(["group"] if any(r.group for r in rows) else []), *params, metric,
              *extra, "epochs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for group in dict.fromkeys(r.group for r in rows):
        members = ranked([r for r in rows if r.group == group], metric, mode)[:n]
        for i, r in enumerate(members, 1):
            cells = [str(i), r.trial_id, *([str(r.group)] if r.group else []),
                     *(_cell(r.config.get(p)) for p in params), _cell(r.score(metric)),
                     *(_cell(r.metrics.get(k)) for k in extra), _cell(r.metrics.get("training_iteration"))]
            lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.error]
    for r in failed:
        lines.append(f"\nfailed: {r.trial_id} ({r.group or ''}) {r.error}")
    return "\n".join(lines)


def plot_metric_vs_params(rows: list[TrialRow], params: list[str], metric: str, mode: str, path: Path,
                          log_params: set[str], title: str) -> Path | None:
    """One panel per swept hyperparameter: the metric of every trial against its value, one
    series per group, each group's best marked (like SDML Fig. 5 / MTFN-RR Fig. 7b)."""
    from scalable_xmr.tracking.plots import plt  # the Agg backend is selected there

    if not params:
        return None
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.4), squeeze=False)
    groups = list(dict.fromkeys(r.group for r in rows))
    for ax, param in zip(axes[0], params, strict=True):
        for group in groups:
            pts = [(float(r.config[param]), r.score(metric)) for r in rows
                   if r.group == group and param in r.config and not math.isnan(r.score(metric))]
            if not pts:
                continue
            x, y = np.array(pts).T
            line = ax.scatter(x, y, s=18, label=str(group) if group else None)
            best = int(np.argmax(y) if mode == "max" else np.argmin(y))
            ax.scatter(x[best], y[best], s=90, facecolors="none", edgecolors=line.get_facecolor()[0])
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        if param in log_params:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if any(groups):
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
