"""Plots of a run (saved under <run>/plots and logged to MLflow): mAP heatmap (query × target),
precision-recall curves (SDML Fig. 2-3) and precision-scope curves (SDML Fig. 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scalable_xmr.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
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
    return _save(fig, path)


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
    return _save(fig, path)
