"""Every plot scalable_xmr makes (saved under <run>/plots or the sweep, and logged to MLflow):
SDML's mAP heatmap (query × target), precision-recall (Fig. 2-3) and precision-scope curves
(Fig. 4); the branch models' R@1 against the re-ranking K (MTFN-RR Fig. 7a); a sweep's metric
against each hyperparameter.

Each plot has a ``*_figure`` function that returns the matplotlib Figure (tests read colours and
markers back from it) and a function that saves it as a PNG. Colours are fixed per thing drawn,
never per panel: a modality keeps its colour in every panel and plot of a run (:func:`colours`, in
the run's modality order), a retrieval direction keeps :data:`DIRECTION_COLOURS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullLocator,
)

from scalable_xmr.io import atomic_path  # noqa: E402

# matplotlib's tab10, spelled out so a colour never depends on the style in use.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")  # past 10 names the colours repeat with another line style
DIRECTION_COLOURS = {"i2t": PALETTE[0], "t2i": PALETTE[3]}
DIRECTION_LABELS = {"i2t": "image → text", "t2i": "text → image (best K')"}
# Sweep trials ASHA stopped before the end: hollow, one marker shape per stopping epoch.
STOPPED_MARKERS = ("v", "s", "D", "^", "P", "X", "<", ">")
MAX_TICKS = 6


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def colours(names: Iterable[str]) -> dict[str, str]:
    """One colour per name, by its position in ``names`` (a run's modality order, which adding a
    modality only extends): the same modality is drawn alike in every panel and plot of a run."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def _linestyle(names: Sequence[str], name: str) -> str:
    return LINESTYLES[(list(names).index(name) // len(PALETTE)) % len(LINESTYLES)]


def short_number(value: float) -> str:
    """A tick label that stays short: 0.5, 200, 1e-4, 2.5e-3."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# ------------------------------------------------------------------------------ SDML
def map_heatmap(modalities: list[str], maps: dict[str, float], map_mean: float, path: Path) -> Path:
    """The mAP of each ordered pair (``maps``: "<query>-<target>" -> mAP) as a heatmap."""
    mods = modalities
    grid = np.full((len(mods), len(mods)), np.nan)
    for i, q in enumerate(mods):
        for j, t in enumerate(mods):
            grid[i, j] = maps.get(f"{q}-{t}", np.nan)
    fig, ax = plt.subplots(figsize=(1.2 * len(mods) + 2, 1.0 * len(mods) + 1.5))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(mods)), mods, rotation=30, ha="right")
    ax.set_yticks(range(len(mods)), mods)
    ax.set_xlabel("target modality")
    ax.set_ylabel("query modality")
    for i in range(len(mods)):
        for j in range(len(mods)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center",
                        color="white" if grid[i, j] < 0.6 else "black", fontsize=8)
    ax.set_title(f"mAP (mean {map_mean:.4f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def curves_figure(
    data: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str,
    modalities: Sequence[str] | None = None, log_x: bool = False,
    span: tuple[float, float, str] | None = None,
) -> Figure:
    """One panel per query modality, one line per target; ``data[(query, target)] = (x, y)``.

    ``modalities``: the run's modality order, which fixes each one's colour (default: the order
    they first appear in ``data``). ``span = (lo, hi, label)``: a range of x to shade (cut to each
    panel's largest x; a line where only ``lo`` fits), e.g. the paper's K = 100..1000.
    """
    order = list(dict.fromkeys([*(modalities or ()), *(m for pair in data for m in pair)]))
    colour = colours(order)
    queries = [m for m in order if any(q == m for q, _ in data)]
    cols = min(3, max(len(queries), 1))
    rows = (len(queries) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, query in zip(axes.flat, queries, strict=False):
        top = 1.0
        for target in order:
            if (query, target) not in data:
                continue
            x, y = (np.asarray(v) for v in data[(query, target)])
            top = max(top, float(np.max(x)))
            ax.plot(x, y, marker=".", linewidth=1, label=target, color=colour[target],
                    linestyle=_linestyle(order, target), gid=f"{query}->{target}")
        if span is not None and top >= span[0]:
            lo, hi = span[0], min(span[1], top)
            mark = (ax.axvspan(lo, hi, color="0.85", zorder=0) if hi > lo
                    else ax.axvline(lo, color="0.6", linestyle=":", zorder=0))
            mark.set_label(span[2])
            mark.set_gid("span")
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: short_number(v)))
        ax.set_title(f"{query} as query", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="target", title_fontsize=7)
    for ax in list(axes.flat)[len(queries):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves(
    data: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], path: Path, xlabel: str, ylabel: str,
    title: str, modalities: Sequence[str] | None = None, log_x: bool = False,
    span: tuple[float, float, str] | None = None,
) -> Path:
    """:func:`curves_figure`, saved at ``path``."""
    return save_figure(curves_figure(data, xlabel, ylabel, title, modalities, log_x, span), path)


# ------------------------------------------------------------------------------ branch models
def rerank_k_figure(val_grids: dict[str, dict[str, list[dict[str, float]]]]) -> Figure:
    """R@1 on val against the re-ranking K (MTFN-RR Fig. 7a): one panel per member and ensemble
    (``val_grids``: its label -> its val grid), image → text and text → image (best K' per K) in
    their fixed colours."""
    entries = val_grids
    cols = min(3, max(len(entries), 1))
    rows = (len(entries) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, (name, grid) in zip(axes.flat, entries.items(), strict=False):
        best = {"i2t": {}, "t2i": {}}
        for direction in best:
            for g in grid[direction]:
                k, r1 = g["k"], g[f"{direction}@1"]
                best[direction][k] = max(best[direction].get(k, -1.0), r1)
        for direction, by_k in best.items():
            ks = sorted(by_k)
            ax.plot(ks, [by_k[k] for k in ks], marker=".", color=DIRECTION_COLOURS[direction],
                    label=DIRECTION_LABELS[direction], gid=f"{name}:{direction}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("re-ranked list length K (K = 1: plain)")
        ax.set_ylabel("R@1 on val (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(entries):]:
        ax.axis("off")
    fig.suptitle("Cross-modal re-ranking against K (MTFN-RR Fig. 7a)")
    fig.tight_layout()
    return fig


def rerank_k(val_grids: dict[str, dict[str, list[dict[str, float]]]], path: Path) -> Path:
    """:func:`rerank_k_figure`, saved at ``path``."""
    return save_figure(rerank_k_figure(val_grids), path)


# ------------------------------------------------------------------------------ sweeps
SweepPoint = tuple[float, float, int | None]  # (hyperparameter value, metric, epochs trained)


def _spans_decades(values: np.ndarray) -> bool:
    """Positive values over more than a decade (a grid of lr=1e-4,...,2e-3): drawn on a log axis,
    where they do not crowd into one corner."""
    values = values[np.isfinite(values)]
    return values.size > 1 and values.min() > 0 and values.max() / values.min() >= 10


def _value_ticks(ax, values: np.ndarray, log: bool) -> None:
    """At most about :data:`MAX_TICKS` short labels (1e-4 style), no minor labels, rotated to fit:
    the values tried when they are few and far enough apart, else round ones (1 and 3 per decade
    on a log axis)."""
    values = np.unique(values[np.isfinite(values)])
    if values.size == 0:
        return
    at = np.log10(values) if log else values
    spread_out = values.size < 2 or np.diff(at).min() >= (at[-1] - at[0]) / (1.5 * MAX_TICKS)
    if values.size <= MAX_TICKS and spread_out:
        ax.xaxis.set_major_locator(FixedLocator(values))
    elif log:
        decades = math.log10(values[-1] / values[0]) if values[0] > 0 else 0.0
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0) if decades < 3 else (1.0,), numticks=MAX_TICKS))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_TICKS - 1))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: short_number(v)))
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)


def sweep_figure(points: dict[str, dict[Any, list[SweepPoint]]], metric: str, mode: str,
                 log_params: set[str], title: str, full_epochs: int | None = None) -> Figure:
    """One panel per hyperparameter (``points[param][group]`` = (value, metric, epochs) of each
    trial), a fixed colour per group, each group's best circled (like SDML Fig. 5 / MTFN-RR
    Fig. 7b), one legend under the panels. Trials that ran fewer than ``full_epochs`` (ASHA stopped
    them) are hollow, one marker shape per stopping epoch ("stopped at epoch N" in the legend);
    full ones are filled circles."""
    groups = list(dict.fromkeys(g for by_group in points.values() for g in by_group))
    colour = colours(str(g) for g in groups)
    stops = sorted({e for by_group in points.values() for pts in by_group.values() for _, _, e in pts
                    if full_epochs is not None and e is not None and e < full_epochs})
    marker = {e: STOPPED_MARKERS[i % len(STOPPED_MARKERS)] for i, e in enumerate(stops)}
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 3.4), squeeze=False)
    for ax, (param, by_group) in zip(axes[0], points.items(), strict=True):
        for group, pts in by_group.items():
            if pts:
                _sweep_series(ax, pts, colour[str(group)], str(group), marker, mode)
        values = np.array([v for pts in by_group.values() for v, _, _ in pts], dtype=float)
        log = param in log_params or _spans_decades(values)
        ax.set_xlabel(param + (" (log scale)" if log else ""))
        ax.set_ylabel(metric)
        if log:
            ax.set_xscale("log")
        _value_ticks(ax, values, log)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour[str(g)], label=str(g))
               for g in groups if g]
    if stops:
        handles.append(Line2D([], [], marker="o", linestyle="", color="0.3",
                              label=f"all {full_epochs} epochs"))
        handles += [Line2D([], [], marker=marker[e], linestyle="", markerfacecolor="none",
                           markeredgecolor="0.3", label=f"stopped at epoch {e}") for e in stops]
    handles.append(Line2D([], [], marker="o", linestyle="", markersize=10, markerfacecolor="none",
                          markeredgecolor="0.3", label="best"))
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8,
               ncol=min(len(handles), 4 * len(points)), frameon=False)
    return fig


def _sweep_series(ax, pts: list[SweepPoint], colour: str, group: str, marker: dict[int, str],
                  mode: str) -> None:
    """One group's trials: filled when they ran every epoch, hollow ``marker[e]`` when stopped at
    epoch e, and its best circled."""
    x, y = np.array([(v, s) for v, s, _ in pts], dtype=float).T
    epochs = [e for _, _, e in pts]
    full = np.array([e not in marker for e in epochs])
    if full.any():
        ax.scatter(x[full], y[full], s=22, color=colour, gid=f"{group}:full")
    for e, m in marker.items():
        sel = np.array([ep == e for ep in epochs])
        if sel.any():
            ax.scatter(x[sel], y[sel], s=26, marker=m, facecolors="none", edgecolors=colour,
                       linewidths=1.2, gid=f"{group}:stopped@{e}")
    best = int(np.argmax(y) if mode == "max" else np.argmin(y))
    ax.scatter(x[best], y[best], s=110, facecolors="none", edgecolors=colour, linewidths=1.4,
               gid=f"{group}:best")


def sweep_scatter(points: dict[str, dict[Any, list[SweepPoint]]], metric: str, mode: str, path: Path,
                  log_params: set[str], title: str, full_epochs: int | None = None) -> Path:
    """:func:`sweep_figure`, saved at ``path``."""
    return save_figure(sweep_figure(points, metric, mode, log_params, title, full_epochs), path)
