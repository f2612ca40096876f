"""Every plot scalable_xmr makes (saved under <run>/plots or the sweep, and logged to MLflow):
SDML's mAP heatmap (query × target), precision-recall (Fig. 2-3) and precision-scope curves
(Fig. 4); the branch models' R@1 against the re-ranking K (MTFN-RR Fig. 7a); a sweep's metric
against each hyperparameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scalable_xmr.io import atomic_path  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def map_heatmap(metrics: dict[str, Any], path: Path) -> Path:
    mods = metrics["modalities"]
    grid = np.full((len(mods), len(mods)), np.nan)
    for i, q in enumerate(mods):
        for j, t in enumerate(mods):
            grid[i, j] = metrics["map"].get(f"{q}-{t}", np.nan)
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
    ax.set_title(f"mAP (mean {metrics['map_mean']:.4f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def curves(
    data: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], path: Path, xlabel: str, ylabel: str,
    title: str,
) -> Path:
    """One panel per query modality, one line per target; ``data[(query, target)] = (x, y)``."""
    queries = list(dict.fromkeys(q for q, _ in data))
    cols = min(3, max(len(queries), 1))
    rows = (len(queries) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, query in zip(axes.flat, queries, strict=False):
        for (q, target), (x, y) in data.items():
            if q == query:
                ax.plot(x, y, marker=".", linewidth=1, label=target)
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
    return save_figure(fig, path)


def rerank_k(metrics: dict[str, Any], path: Path) -> Path:
    """R@1 on val against the re-ranking K, I2T and T2I (best K' per K): MTFN-RR Fig. 7a."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    entries = {**metrics["models"], **{f"{m} ensemble": e for m, e in metrics["ensembles"].items()}}
    for name, entry in entries.items():
        grid = entry["val_grid"]
        i2t = sorted((g["k"], g["i2t@1"]) for g in grid["i2t"])
        best_t2i: dict[int, float] = {}
        for g in grid["t2i"]:
            best_t2i[g["k"]] = max(best_t2i.get(g["k"], -1.0), g["t2i@1"])
        axes[0].plot(*zip(*i2t, strict=True), marker=".", label=name)
        axes[1].plot(sorted(best_t2i), [best_t2i[k] for k in sorted(best_t2i)], marker=".", label=name)
    for ax, title in zip(axes, ("image → text R@1 (val)", "text → image R@1 (val, best K')"), strict=True):
        ax.set_xlabel("re-ranked list length K (K = 1: plain)")
        ax.set_ylabel("R@1 (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Cross-modal re-ranking against K (MTFN-RR Fig. 7a)")
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_scatter(points: dict[str, dict[Any, list[tuple[float, float]]]], metric: str, mode: str,
                  path: Path, log_params: set[str], title: str) -> Path:
    """One panel per hyperparameter (``points[param][group]`` = (value, metric) of each trial), one
    series per group, each group's best circled (like SDML Fig. 5 / MTFN-RR Fig. 7b)."""
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 3.4), squeeze=False)
    for ax, (param, by_group) in zip(axes[0], points.items(), strict=True):
        for group, pts in by_group.items():
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
        if any(by_group):
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
