"""Finishing a train-pairs run on the driver: ensembles, metrics.json, the R@K table, plots, MLflow.

Everything here reads the members' results and stored similarity matrices; nothing trains.
"""

from __future__ import annotations

from typing import Any

from scalable_xmr.branch.evaluate import KS, RerankChoice, recall_table
from scalable_xmr.branch.member import BranchResult, evaluate_ensemble
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tracking.tracker import Tracker

RESULT_KEYS = ("plain", "rerank", "plain_1k", "rerank_1k")


def ensembles(store: RunStore, meta: RunMeta, results: dict[str, BranchResult]) -> dict[str, dict]:
    """Each model with M > 1 members: mean similarities, K chosen on val, test R@K."""
    if meta.ensemble < 2:
        return {}
    splits = meta.dataset["splits"]
    per_image = (splits["val"]["captions_per_image"], splits["test"]["captions_per_image"])
    rerank = meta.rerank or {}
    ks = tuple(rerank["ks"]) if rerank.get("ks") else None
    k_texts = tuple(rerank["k_texts"]) if rerank.get("k_texts") else None
    out = {}
    for model in meta.models:
        members = [r for r in results.values() if r.model == model]
        dirs = [r.out_dir for r in sorted(members, key=lambda r: r.seed)]
        out[model] = evaluate_ensemble(dirs, str(store.member_dir(model)), per_image, ks, k_texts,
                                       rerank.get("t2i_groups", "query"))  # older runs: query groups
        out[model]["members"] = [r.name for r in sorted(members, key=lambda r: r.seed)]
    return out


def build_metrics(meta: RunMeta, results: dict[str, BranchResult], ens: dict[str, dict]) -> dict:
    test = meta.dataset["splits"]["test"]
    models = {}
    for name in meta.members:
        r = results[name]
        models[name] = {"model": r.model, "seed": r.seed, **r.test, "choice": r.choice,
                        "t2i_groups": r.t2i_groups, "val": r.val, "val_grid": r.grid,
                        "best_epoch": r.best_epoch, "text_sim": r.text_sim}
    ensemble_rows = {
        m: {"members": e["members"], **e["test"], "choice": e["choice"], "t2i_groups": e["t2i_groups"],
            "val": e["val"], "val_grid": e["grid"]}
        for m, e in ens.items()
    }
    return {"kind": "pairs", "dataset": meta.dataset["uri"],
            "test": {"images": test["images"], "captions_per_image": test["captions_per_image"],
                     "protocol": "5K and 1K (5 folds)" if "plain_1k" in next(iter(models.values()))
                     else "all test images"},
            "models": models, "ensembles": ensemble_rows}


def _rows(metrics: dict[str, Any], suffix: str) -> list[tuple[str, dict[str, float]]]:
    rows = []
    entries = [(n, e) for n, e in metrics["models"].items()]
    entries += [(f"{m} ensemble x{len(e['members'])}", e) for m, e in metrics["ensembles"].items()]
    for name, entry in entries:
        rows.append((name, entry[f"plain{suffix}"]))
        if f"rerank{suffix}" in entry:
            choice = RerankChoice(**entry["choice"])
            groups = entry.get("t2i_groups", "query")
            rows.append((f"  + re-rank (i2t K={choice.k_i2t}; t2i K={choice.k_t2i}, K'={choice.k_text}, "
                         f"{groups} groups)",
                         entry[f"rerank{suffix}"]))
    return rows


def pairs_table(metrics: dict[str, Any]) -> str:
    """The printed R@K table: per member (and ensemble) a plain row and a re-ranked row."""
    test = metrics["test"]
    what = f"{test['images']} images x {test['captions_per_image']} captions"
    first = next(iter(metrics["models"].values()))
    if "plain_1k" not in first:
        return recall_table(_rows(metrics, ""), f"R@K on the test split ({what}, all images)")
    return "\n\n".join([
        recall_table(_rows(metrics, "_1k"), f"R@K on the test split, COCO 1K (mean of 5 folds of {what})"),
        recall_table(_rows(metrics, ""), f"R@K on the test split, COCO 5K ({what})"),
    ])


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
    return out


def log_members(tracker: Tracker, parent: str | None, meta: RunMeta, metrics: dict[str, Any],
                results: dict[str, BranchResult]) -> None:
    """One child run per member (and per ensemble): params, per-epoch losses, R@K."""
    for name, entry in metrics["models"].items():
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
    for model, entry in metrics["ensembles"].items():
        child = tracker.start_run(f"{model}-ensemble", parent_id=parent,
                                  tags={"model": model, "member": "ensemble"})
        tracker.log_params(child, {"model": model, "members": ",".join(entry["members"]),
                                   "ensemble": len(entry["members"]), "t2i_groups": entry["t2i_groups"]})
        tracker.log_metrics(child, {mlflow_name(k): v for k, v in _recall_metrics(entry).items()})
        tracker.end_run(child)
    parent_metrics = {}
    labels = [*metrics["models"].items(), *((f"{m}-ensemble", e) for m, e in metrics["ensembles"].items())]
    for label, entry in labels:
        parent_metrics[f"{label}/rsum"] = entry["plain"]["rsum"]
        parent_metrics[f"{label}/rerank/rsum"] = entry["rerank"]["rsum"]
        parent_metrics[f"{label}/recall/i2t_1"] = entry["plain"]["i2t@1"]
    tracker.log_metrics(parent, parent_metrics)


def run_params(meta: RunMeta) -> dict[str, Any]:
    return {"dataset": meta.dataset["uri"], "models": ",".join(meta.models),
            "ensemble": meta.ensemble, "target": meta.target,
            "rerank_ks": meta.rerank["ks"], "rerank_k_texts": meta.rerank["k_texts"],
            "rerank_t2i_groups": meta.rerank.get("t2i_groups", "query"),
            "ks": ",".join(map(str, KS))}
