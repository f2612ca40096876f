"""Finishing a train-pairs run on the driver: ensembles, metrics.json, the R@K table, plots, MLflow.

Everything here reads the members' results and stored similarity matrices; nothing trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalable_xmr.branch.evaluate import (
    KS,
    RerankChoice,
    average_similarities,
    check_t2i_groups,
    mean_sigmoid_log_odds,
    recall_report,
    recall_table,
    rerank_grid,
    rerank_grid_for,
    select_rerank,
)
from scalable_xmr.branch.member import BranchResult
from scalable_xmr.branch.member_scores import save_array, sims_path
from scalable_xmr.branch.metrics_file import BranchMetrics
from scalable_xmr.branch.model_file import read_model_file
from scalable_xmr.errors import InputError
from scalable_xmr.functional.retrieval import recall_at_k
from scalable_xmr.io import atomic_write_json
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker

RESULT_KEYS = ("plain", "rerank", "plain_1k", "rerank_1k")
# The printed target-domain table: VSA-AE-MMD Table 1's R@1/5/10 with median and mean rank.
TARGET_KEYS = ("i2t@1", "i2t@5", "i2t@10", "i2t_medr", "i2t_meanr",
               "t2i@1", "t2i@5", "t2i@10", "t2i_medr", "t2i_meanr", "rsum")
# Models whose stored ranking scores are pre-sigmoid logits -> the model.pt state_dict key of the
# bias they leave out: MTFN stores W_m f, its S_IT = sigmoid(W_m f + b_m) (Eq. 4; models/mtfn.py).
SIGMOID_BIAS = {"mtfn": "score.bias"}
MEAN_SCORES = "mean of the members' scores"
MEAN_S_IT = "log-odds of the mean of the members' S_IT (float64)"


# ------------------------------------------------------------------------------ ensembles
def ensembles(store: RunStore, meta: RunMeta, results: dict[str, BranchResult]) -> dict[str, dict]:
    """Each model with M > 1 members: combined similarities, K chosen on val, test R@K."""
    if meta.ensemble < 2:
        return {}
    splits = meta.dataset["splits"]
    per_image = (splits["val"]["captions_per_image"], splits["test"]["captions_per_image"])
    rerank = meta.rerank or {}
    ks = tuple(rerank["ks"]) if rerank.get("ks") else None
    k_texts = tuple(rerank["k_texts"]) if rerank.get("k_texts") else None
    out = {}
    for model in meta.models:
        members = sorted((r for r in results.values() if r.model == model), key=lambda r: r.seed)
        target = members[0].target
        out[model] = evaluate_ensemble(model, [r.out_dir for r in members], str(store.member_dir(model)),
                                       per_image, ks, k_texts,
                                       rerank.get("t2i_groups", "query"),  # older runs: query groups
                                       target_splits=target["splits"] if target else None)
        out[model]["members"] = [r.name for r in members]
    return out


def _load_sim(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: similarity matrix not found (was the member trained with save_sims?)")
    return np.load(path, mmap_mode="r")


def _sigmoid_bias(model: str, member_dir: str) -> float:
    """b_m of a member whose stored scores leave it out (:data:`SIGMOID_BIAS`), from its model.pt."""
    path = Path(member_dir) / "model.pt"
    if not path.is_file():
        raise InputError(f"{path}: not found; an {model} ensemble needs each member's b_m from it")
    payload = read_model_file(path)
    if payload.get("model") != model:
        raise InputError(f"{path}: a {payload.get('model')!r} model, not a member of the {model} ensemble")
    return float(payload["state_dict"][SIGMOID_BIAS[model]])


def _combine(mats: list[np.ndarray], offsets: list[float] | None, name: str) -> torch.Tensor:
    if offsets is None:
        return average_similarities(mats, name)
    return mean_sigmoid_log_odds(mats, offsets, name)


def evaluate_ensemble(
    model: str,
    member_dirs: list[str],
    out_dir: str,
    captions_per_image: tuple[int, int],
    ks: tuple[int, ...] | None = None,
    k_texts: tuple[int, ...] | None = None,
    t2i_groups: str = "candidate",
    target_splits: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """An ensemble of one model's trained members (MTFN-RR §4, Table 4): their val / test
    image-text scores combined, re-ranking K chosen on the combined val matrices and applied to
    the combined test matrices (all written to ``out_dir/sims``).

    Image-text scores: MTFN-RR averages its M models' S_IT = sigmoid(W_m f + b_m). An MTFN member
    stores W_m f, so MTFN ensembles rank by :func:`mean_sigmoid_log_odds` of W_m f + b_m (b_m
    from each member's model.pt): the float64 log-odds of the mean S_IT, which ranks exactly as
    the mean S_IT and keeps its resolution where S_IT saturates. Models whose stored scores are
    their similarity (VSE, VSA: cosines; MMCA: a sum of cosines) average those. ``score`` in the
    result says which.

    Text-text scores (the K' neighbours of T2I re-ranking) are averaged as stored, for MTFN its
    W_m' f: MTFN-RR does not say how (or whether) its ensembles combine S_TT, and its reference
    code has no ensemble (and re-ranks T2I with ground-truth caption groups, not S_TT).

    ``captions_per_image`` is (val, test); ``t2i_groups`` as in :class:`BranchSpec`;
    ``target_splits`` (VSA with a target: split -> images, captions_per_image) adds the plain
    R@K of the combined ``target_<split>`` scores, as :func:`member_scores.evaluate_target` reports a
    member's. Returns the keys of :func:`member_scores.evaluate_branch` plus ``score`` and ``target``.
    """
    check_t2i_groups(t2i_groups)
    offsets = [_sigmoid_bias(model, d) for d in member_dirs] if model in SIGMOID_BIAS else None
    n_val, n_test = captions_per_image
    combined = {}
    for split in ("val", "test"):
        mats = [_load_sim(sims_path(d, split)) for d in member_dirs]
        combined[split] = _combine(mats, offsets, f"{split} sims")
        texts = [_load_sim(sims_path(d, split, text=True)) for d in member_dirs]
        combined[f"{split}_text"] = average_similarities(texts, f"{split}_text sims")
        save_array(sims_path(out_dir, split), combined[split])
        save_array(sims_path(out_dir, split, text=True), combined[f"{split}_text"])
    val_sim, val_text = combined["val"], combined["val_text"]
    grid_spec = rerank_grid_for(val_sim.shape[0], val_sim.shape[1], ks, k_texts)
    grid = rerank_grid(val_sim, val_text, n_val, grid_spec, t2i_groups)
    choice = select_rerank(grid)
    test = recall_report(combined["test"], combined["test_text"], n_test, choice, t2i_groups)
    val_plain = recall_report(val_sim, val_text, n_val, None)["plain"]
    result = {"members": [str(d) for d in member_dirs], "val": val_plain, "test": test, "grid": grid,
              "choice": choice.to_dict(), "t2i_groups": t2i_groups, "captions_per_image": n_test,
              "score": MEAN_SCORES if offsets is None else MEAN_S_IT, "target": None}
    if target_splits:
        result["target"] = {"splits": target_splits}
        for split, sizes in target_splits.items():
            name = f"target_{split}"
            sim = _combine([_load_sim(sims_path(d, name)) for d in member_dirs], offsets, f"{name} sims")
            save_array(sims_path(out_dir, name), sim)
            result["target"][split] = recall_at_k(sim, sizes["captions_per_image"], KS)
    atomic_write_json(Path(out_dir) / "ensemble.json", result)
    return result


# ------------------------------------------------------------------------------ metrics.json
def rk_metrics(meta: RunMeta, results: dict[str, BranchResult], ens: dict[str, dict]) -> BranchMetrics:
    """metrics.json of a branch run: each member's and each ensemble's test R@K (plain and
    re-ranked), the val grid and choice, and the target-domain R@K when there is a target."""
    test = meta.dataset["splits"]["test"]
    models = {}
    for name in meta.members:
        r = results[name]
        models[name] = {"model": r.model, "seed": r.seed, **r.test, "choice": r.choice,
                        "t2i_groups": r.t2i_groups, "val": r.val, "val_grid": r.grid,
                        "best_epoch": r.best_epoch, "text_sim": r.text_sim, **_target_entry(r.target)}
    ensemble_rows = {
        m: {"members": e["members"], **e["test"], "choice": e["choice"], "t2i_groups": e["t2i_groups"],
            "val": e["val"], "val_grid": e["grid"], "score": e.get("score", MEAN_SCORES),
            **_target_entry(e.get("target"))}
        for m, e in ens.items()
    }
    test_block = {"images": test["images"], "captions_per_image": test["captions_per_image"],
                  "protocol": "5K and 1K (5 folds)" if "plain_1k" in next(iter(models.values()))
                  else "all test images"}
    target = next((r.target for r in results.values() if r.target), None)
    target_block = None if target is None else {
        "dataset": target["uri"], "splits": target["splits"],
        "protocol": "plain R@K over all images of each target split (VSA-AE-MMD Table 1)",
        "selected_on": "the source val split (epoch and re-ranking K; target pairs are unavailable "
                       "to unsupervised domain adaptation)",
    }
    return BranchMetrics(meta.dataset["uri"], test_block, models, ensemble_rows, target_block)


def _target_entry(target: dict[str, Any] | None) -> dict[str, Any]:
    """``{"target": {"test": R@K, "val": R@K}}`` of a member or ensemble with target figures."""
    if not target:
        return {}
    return {"target": {split: target[split] for split in ("test", "val") if split in target}}


# ------------------------------------------------------------------------------ the printed table
def _rows(metrics: BranchMetrics, suffix: str) -> list[tuple[str, dict[str, float]]]:
    rows = []
    for name, entry in metrics.entries():
        rows.append((name, entry[f"plain{suffix}"]))
        if f"rerank{suffix}" in entry:
            choice = RerankChoice(**entry["choice"])
            groups = entry.get("t2i_groups", "query")
            rows.append((f"  + re-rank (i2t K={choice.k_i2t}; t2i K={choice.k_t2i}, K'={choice.k_text}, "
                         f"{groups} groups)",
                         entry[f"rerank{suffix}"]))
    return rows


def rk_table(metrics: BranchMetrics) -> str:
    """The printed R@K table: per member (and ensemble) a plain row and a re-ranked row of R@1/5/10,
    medr, meanr and rsum; then, with a VSA target domain, the plain target-domain R@K
    (:func:`target_tables`)."""
    test = metrics.test
    what = f"{test['images']} images x {test['captions_per_image']} captions"
    first = next(iter(metrics.models.values()))
    if "plain_1k" not in first:
        tables = [recall_table(_rows(metrics, ""), f"R@K on the test split ({what}, all images)")]
    else:
        folds = f"R@K on the test split, COCO 1K (mean of 5 folds of {what})"
        tables = [recall_table(_rows(metrics, "_1k"), folds),
                  recall_table(_rows(metrics, ""), f"R@K on the test split, COCO 5K ({what})")]
    return "\n\n".join([*tables, *target_tables(metrics)])


def target_tables(metrics: BranchMetrics) -> list[str]:
    """One table per target split (test, then val): R@1/5/10, medr, meanr, rsum of every entry
    with target figures, titled with the data selection used."""
    target = metrics.target
    if not target:
        return []
    entries = [(n, e) for n, e in metrics.entries() if "target" in e]
    tables = []
    for split, sizes in target["splits"].items():
        what = f"{sizes['images']} images x {sizes['captions_per_image']} captions, all images"
        title = (f"R@K on the TARGET domain's {split} split ({what}; plain, VSA-AE-MMD Table 1)\n"
                 f"  {target['dataset']}; the epoch was selected on the source val split")
        tables.append(recall_table([(n, e["target"][split]) for n, e in entries], title, TARGET_KEYS))
    return tables


# ------------------------------------------------------------------------------ MLflow
def mlflow_name(key: str) -> str:
    """MLflow refuses '@' in metric names (``^[/\\w.\\- :]*$``): ``recall/i2t@1`` is logged as
    ``recall/i2t_1`` (the sweeps' convention, tuning/tracking.py)."""
    return key.replace("@", "_")


def _recall_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """Metric names (before :func:`mlflow_name`): recall/i2t@1 ... recall/t2i@10, recall/*_medr,
    recall/*_meanr, rsum, rerank/... and rerank/rsum, plus recall_1k/... for a 5000-image test."""
    out: dict[str, float] = {}
    for key in RESULT_KEYS:
        if key not in entry:
            continue
        prefix = {"plain": "recall", "rerank": "rerank"}[key.split("_")[0]]
        prefix += "_1k" if key.endswith("_1k") else ""
        values = entry[key]
        for name, v in values.items():
            if name == "rsum":
                out["rsum" if prefix == "recall" else f"{prefix}/rsum"] = v
            else:
                out[f"{prefix}/{name}"] = v
    out.update({f"rerank/{k}": float(v) for k, v in entry["choice"].items()})
    out.update(_target_metrics(entry.get("target", {})))
    return out


def _target_metrics(target: dict[str, Any]) -> dict[str, float]:
    """The target domain's figures beside the source ones: target_recall/i2t@1 ...
    target_recall/t2i_meanr and target_rsum (its test split), target_val_recall/... and
    target_val_rsum (its val split)."""
    out: dict[str, float] = {}
    for split, prefix in (("test", "target"), ("val", "target_val")):
        for name, v in target.get(split, {}).items():
            out[f"{prefix}_rsum" if name == "rsum" else f"{prefix}_recall/{name}"] = v
    return out


def log_members(tracker: Tracker, parent: str | None, meta: RunMeta, metrics: BranchMetrics,
                results: dict[str, BranchResult]) -> None:
    """One child run per member (and per ensemble): params, per-epoch losses, R@K."""
    for name, entry in metrics.models.items():
        r = results[name]
        child = tracker.start_run(name, parent_id=parent, tags={"model": r.model, "member": name})
        tracker.log_params(child, {"model": r.model, "seed": r.seed, "dataset": meta.dataset["uri"],
                                   "text_sim": r.text_sim, "t2i_groups": r.t2i_groups,
                                   "trainer": r.trainer_config,
                                   "model_config": r.model_config})
        rows = []
        for h in r.history:
            rows.append(("loss/train", h["loss"], h["epoch"]))
            if h["stage"] == "image_text" and "val_rsum" in h:
                rows.append(("val/rsum", h["val_rsum"], h["epoch"]))
            elif h["stage"] == "text_text":
                rows.append(("val/tt_r1", h["val_score"], h["epoch"]))
        rows += [(mlflow_name(k), v, 0) for k, v in _recall_metrics(entry).items()]
        rows.append(("train_seconds", r.train_seconds, 0))
        tracker.log_metric_rows(child, rows)
        meta.members[name]["mlflow_run_id"] = child
        tracker.end_run(child)
    for model, entry in metrics.ensembles.items():
        child = tracker.start_run(f"{model}-ensemble", parent_id=parent,
                                  tags={"model": model, "member": "ensemble"})
        tracker.log_params(child, {"model": model, "members": ",".join(entry["members"]),
                                   "ensemble": len(entry["members"]), "t2i_groups": entry["t2i_groups"]})
        tracker.log_metrics(child, {mlflow_name(k): v for k, v in _recall_metrics(entry).items()})
        tracker.end_run(child)
    parent_metrics = {}
    labels = [*metrics.models.items(), *((f"{m}-ensemble", e) for m, e in metrics.ensembles.items())]
    for label, entry in labels:
        parent_metrics[f"{label}/rsum"] = entry["plain"]["rsum"]
        parent_metrics[f"{label}/rerank/rsum"] = entry["rerank"]["rsum"]
        parent_metrics[f"{label}/recall/i2t_1"] = entry["plain"]["i2t@1"]
        if "target" in entry:
            parent_metrics[f"{label}/target_rsum"] = entry["target"]["test"]["rsum"]
    tracker.log_metrics(parent, parent_metrics)


def run_params(meta: RunMeta) -> dict[str, Any]:
    return {"dataset": meta.dataset["uri"], "models": ",".join(meta.models),
            "ensemble": meta.ensemble, "target": meta.target,
            "rerank_ks": meta.rerank["ks"], "rerank_k_texts": meta.rerank["k_texts"],
            "rerank_t2i_groups": meta.rerank.get("t2i_groups", "query"),
            "ks": ",".join(map(str, KS))}
