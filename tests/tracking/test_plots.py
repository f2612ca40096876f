"""The plots read right: precision-scope K fits each gallery, a modality (a direction) keeps its
colour in every panel and plot, and a sweep shows which trials ASHA stopped early. Figures are read
back from matplotlib's objects just before they are saved."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import to_hex

from scalable_xmr.functional.retrieval import scope_levels
from scalable_xmr.sdml import evaluate
from scalable_xmr.sdml.job import make_plots
from scalable_xmr.tracking import plots
from scalable_xmr.tuning.results import TrialRow, plot_metric_vs_params


def _emb(n: int, seed: int, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes  # 10 classes: n / 10 relevant items per query
    return np.array([f"x{i}" for i in range(n)]), labels, rng.normal(size=(n, 4)).astype(np.float32)


@pytest.fixture
def saved(monkeypatch):
    """Every figure saved through plots.save_figure, by file name (read before it is closed)."""
    figures = {}
    real = plots.save_figure

    def spy(fig, path):
        figures[path.name] = {
            "lines": [{"panel": ax.get_title(), "gid": line.get_gid(), "label": line.get_label(),
                       "x": np.asarray(line.get_xdata()).tolist(), "colour": to_hex(line.get_color())}
                      for ax in fig.axes for line in ax.get_lines() if line.get_gid()],
            "spans": [(ax.get_title(), p.get_label(), p.get_gid()) for ax in fig.axes
                      for p in [*ax.patches, *ax.get_lines()] if p.get_gid() == "span"],
            "scatter": [{"panel": ax.get_xlabel(), "gid": c.get_gid(), "n": len(c.get_offsets()),
                         "face": c.get_facecolors().tolist(),
                         "edge": [to_hex(e) for e in c.get_edgecolors()], "paths": c.get_paths()}
                        for ax in fig.axes for c in ax.collections if c.get_gid()],
            "legend": [t.get_text() for legend in [*(ax.get_legend() for ax in fig.axes), *fig.legends]
                       if legend for t in legend.get_texts()],
            "xticks": [[t.get_text() for t, at in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
                        if min(ax.get_xlim()) <= at <= max(ax.get_xlim())] for ax in fig.axes],
            "xscale": [ax.get_xscale() for ax in fig.axes],
        }
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    return figures


def _sdml_plots(tmp_path, emb):
    maps = {evaluate.pair_key(q, t): 0.5 for q, t in evaluate.all_pairs(list(emb))}
    paths = make_plots(SimpleNamespace(plots_dir=tmp_path), evaluate.build_metrics(maps, list(emb)), emb)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    return paths


def test_precision_scope_k_fits_a_100_and_a_400_item_gallery(tmp_path, saved):
    # the demo's 100-item gallery and mfeat's 400-item test split
    emb = {"image": _emb(400, 0), "text": _emb(100, 1)}
    _sdml_plots(tmp_path, emb)
    scope = {line["gid"]: line["x"] for line in saved["precision_scope.png"]["lines"]}
    assert scope["text->image"] == [1, 2, 3, 4, 5, 7, 9, 12, 17, 23, 32, 44, 60, 83, 100, 113, 155, 200,
                                    300, 400]
    assert scope["image->text"] == [1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 23, 30, 38, 48, 62, 78, 100]
    assert saved["precision_scope.png"]["xscale"] == ["log", "log"]
    # the paper's K = 100..1000 is shaded where it falls inside the panel: 100..400 on the image
    # gallery, a line at 100 on the 100-item one
    spans = saved["precision_scope.png"]["spans"]
    assert sorted(spans) == [("image as query", "SDML Fig. 4: K = 100..1000", "span"),
                             ("text as query", "SDML Fig. 4: K = 100..1000", "span")]
    assert "SDML Fig. 4: K = 100..1000" in saved["precision_scope.png"]["legend"]


def test_precision_scope_of_a_1000_item_gallery_has_the_papers_k(tmp_path, saved):
    emb = {"image": _emb(1200, 0), "text": _emb(30, 1)}
    _sdml_plots(tmp_path, emb)
    scope = {line["gid"]: line["x"] for line in saved["precision_scope.png"]["lines"]}
    assert set(range(100, 1001, 100)) <= set(scope["text->image"])
    assert scope["text->image"][0] == 1 and scope["text->image"][-1] == 1200
    assert scope["image->text"] == list(scope_levels(30))  # under 100: no paper K, no span
    assert [s[0] for s in saved["precision_scope.png"]["spans"]] == ["text as query"]


def test_a_modality_keeps_its_colour_in_every_panel_and_plot(tmp_path, saved):
    order = ["image", "text", "audio", "video"]
    emb = {m: _emb(100 + 20 * i, i) for i, m in enumerate(order)}
    _sdml_plots(tmp_path, emb)
    seen: dict[str, set[str]] = {}
    for name in ("precision_recall.png", "precision_scope.png"):
        lines = saved[name]["lines"]
        assert len(lines) == 12  # 4 panels x 3 targets
        for line in lines:
            seen.setdefault(line["label"], set()).add(line["colour"])
    # one colour per target modality in every panel of both plots; the run's order picks it
    assert {m: c.pop() for m, c in seen.items() if len(c) == 1} == {
        m: plots.PALETTE[i] for i, m in enumerate(order)}
    # adding a modality keeps the others' colours
    assert plots.colours([*order, "3d"]) == {**plots.colours(order), "3d": plots.PALETTE[4]}


def _grid(base: float) -> dict:
    return {"i2t": [{"k": k, "i2t@1": base + k} for k in (1, 5, 10)],
            "t2i": [{"k": k, "k_text": kt, "t2i@1": base + k + kt} for k in (1, 5, 10) for kt in (0, 2)]}


def test_each_direction_keeps_its_colour_in_every_rerank_panel(tmp_path, saved):
    grids = {"vse-seed0": _grid(10), "vse-seed1": _grid(20), "mtfn-seed0": _grid(30),
             "vse ensemble": _grid(40)}
    plots.rerank_k(grids, tmp_path / "rerank_k.png")
    lines = saved["rerank_k.png"]["lines"]
    panels = sorted({line["panel"] for line in lines})
    assert panels == ["mtfn-seed0", "vse ensemble", "vse-seed0", "vse-seed1"]
    for direction in ("i2t", "t2i"):
        colours = {line["colour"] for line in lines if line["gid"].endswith(f":{direction}")}
        assert colours == {plots.DIRECTION_COLOURS[direction]}
    t2i = next(line for line in lines if line["gid"] == "vse-seed0:t2i")
    assert t2i["x"] == [1, 5, 10]  # best K' per K


def _row(i: int, group: str, lr: float, score: float, epochs: int) -> TrialRow:
    return TrialRow(f"t{i:02d}", {"lr": lr, "lam": 0.1 * (i % 5 + 1), "modality": group},
                    {"anchor_map": score, "training_iteration": epochs}, group)


def test_sweep_plot_marks_trials_asha_stopped_and_keeps_lr_labels_short(tmp_path, saved):
    rates = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-4]
    rows = [_row(i, group, lr, 0.1 * i + (0.5 if group == "text" else 0), epochs)
            for group in ("audio", "text")
            for i, (lr, epochs) in enumerate(zip(rates, (8, 1, 1, 2, 8, 1, 2, 8), strict=True))]
    path = plot_metric_vs_params(rows, ["lr", "lam"], "anchor_map", "max", tmp_path / "sweep.png",
                                 {"lr"}, "sdml sweep", full_epochs=8)
    assert path.is_file()
    fig = saved["sweep.png"]
    by_gid = {(s["panel"], s["gid"]): s for s in fig["scatter"]}
    lr_panel = "lr (log scale)"
    full = by_gid[(lr_panel, "audio:full")]
    stopped = by_gid[(lr_panel, "audio:stopped@1")]
    assert full["n"] == 3 and stopped["n"] == 3 and full["face"][0][3] == 1.0  # filled
    assert all(face[3] == 0.0 for face in stopped["face"])  # hollow ...
    assert stopped["paths"][0] != full["paths"][0]  # ... and another marker shape
    assert stopped["edge"][0] == plots.colours(["audio", "text"])["audio"]  # in the group's colour
    assert (lr_panel, "audio:stopped@2") in by_gid and (lr_panel, "text:stopped@1") in by_gid
    for text in ("audio", "text", "all 8 epochs", "stopped at epoch 1", "stopped at epoch 2", "best"):
        assert text in fig["legend"]
    lr_ticks = fig["xticks"][0]
    assert 0 < len(lr_ticks) <= plots.MAX_TICKS and all(len(t) <= 6 for t in lr_ticks), lr_ticks
    assert any("e-" in t for t in lr_ticks), lr_ticks  # 1e-4 style, not 0.000100
    # a grid crowded at one end, not declared log: a log axis, and round ticks, not every value
    grid = [1e-4, 1.5e-4, 2e-4, 5e-4, 1e-3, 2e-3]
    plot_metric_vs_params([TrialRow(f"g{i}", {"lr": lr}, {"anchor_map": 0.5, "training_iteration": 4})
                           for i, lr in enumerate(grid)], ["lr"], "anchor_map", "max",
                          tmp_path / "grid.png", set(), "grid")
    assert saved["grid.png"]["xscale"] == ["log"]
    assert [t for t in saved["grid.png"]["xticks"][0] if t] == ["1e-4", "3e-4", "1e-3"]
    # no stop information (older results): every trial is drawn as a full one
    plot_metric_vs_params([TrialRow("a", {"lr": 1e-3}, {"anchor_map": 0.5})], ["lr"], "anchor_map", "max",
                          tmp_path / "old.png", set(), "old")
    assert [s["gid"] for s in saved["old.png"]["scatter"]] == ["None:full", "None:best"]


@pytest.mark.parametrize(("value", "text"), [(1e-4, "1e-4"), (2.5e-3, "2.5e-3"), (0.5, "0.5"),
                                             (200, "200"), (0, "0"), (3e5, "3e5")])
def test_short_number(value, text):
    assert plots.short_number(value) == text
