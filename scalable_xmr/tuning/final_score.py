"""A sweep's chosen configuration scored on the test split: once, at the end of the sweep.

Trials select on validation only. They never read their test split, so no test figure reaches
Tune, the trials' MLflow runs or the choice of the best trial. When the sweep has chosen (per
modality for SDML, one trial for a branch model), it scores that choice on test here, once, with a
trial's resources (in a Ray task when that includes a GPU, else on the driver), from the model the
chosen trial saved (``model.pt``); nothing is retrained. best.json, summary.md, the printed
summary and the sweep's MLflow parent run carry the result labelled :data:`TEST_LABEL`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scalable_xmr.branch.evaluate import RerankChoice, recall_report
from scalable_xmr.branch.member import RESULT_FILE, BranchResult
from scalable_xmr.branch.member_scores import score_model
from scalable_xmr.branch.model_file import load_branch_model
from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.models.runtime import resolve_device
from scalable_xmr.models.sdml import SDMLAutoencoder
from scalable_xmr.sdml import evaluate
from scalable_xmr.store.projection import load_projection
from scalable_xmr.store.run_store import RunStore
from scalable_xmr.tuning.sdml_trial import anchor_map
from scalable_xmr.tuning.trial_io import trial_dir

TEST_LABEL = "test (chosen config, scored once)"


def run_once(fn: Callable[..., dict[str, Any]], info: dict[str, Any], *args: Any) -> dict[str, Any]:
    """``fn(*args, device=..., threads=...)`` with one trial's CPUs and GPUs: in one Ray task when
    it needs a GPU, else here on the driver, which has the sweep's files and its modules loaded
    already (a Ray task would start a worker and import torch first: seconds per sweep)."""
    import ray
    import torch

    gpus, cpus = float(info["gpus_per_trial"]), float(info["cpus_per_trial"])
    threads = max(1, int(cpus))
    if gpus == 0:
        before = torch.get_num_threads()
        try:
            return fn(*args, device="cpu", threads=threads)
        finally:
            torch.set_num_threads(before)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(fn)
    return ray.get(task.remote(*args, device="auto", threads=threads))


# -------------------------------------------------------------------------------------- branch
def score_branch_trial(trial_dir: str, dataset_uri: str, device: str = "cpu",
                       threads: int = 1) -> dict[str, Any]:
    """Plain and re-ranked test R@K of the model a branch trial selected (its ``model.pt``), with
    the K / K' (and T2I groups) it chose on val (its ``result.json``). A trial stopped before its
    end has neither: the result then says so instead."""
    import torch

    torch.set_num_threads(threads)
    path, result_path = Path(trial_dir) / "model.pt", Path(trial_dir) / RESULT_FILE
    if not (path.is_file() and result_path.is_file()):
        return {"label": TEST_LABEL, "note": f"{trial_dir}: the chosen trial stopped before its end "
                "(no model.pt / result.json); not scored"}
    ds = open_paired_dataset(dataset_uri)
    if "test" not in ds.splits():
        return {"label": TEST_LABEL, "note": f"{dataset_uri}: no test split; not scored"}
    result = BranchResult.read(trial_dir)
    choice = RerankChoice(**{k: int(v) for k, v in result.choice.items()})
    groups = result.t2i_groups
    split = ds.read_split("test")
    dev = resolve_device(device)  # "auto": CUDA when this task sees its GPU, else CPU
    model, config = load_branch_model(path, dev)
    sim, text_sim, source = score_model(model, config, split, dev)
    report = recall_report(sim, text_sim, split.require_captions_per_image(), choice, t2i_groups=groups)
    return {"label": TEST_LABEL, "split": "test", "choice": choice.to_dict(), "t2i_groups": groups,
            "text_sim": source, **report}


def branch_test(row, info: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """best.json's ``test`` of a branch sweep: its chosen trial (``row``) scored once."""
    out = run_once(score_branch_trial, info, str(trial_dir(sweep_dir, row.trial_id)),
                   info["dataset"]["uri"])
    return {**out, "trial_id": row.trial_id}


def branch_summary(test: dict[str, Any]) -> str:
    """One line for summary.md and the console."""
    if "plain" not in test:
        return f"{TEST_LABEL}: {test.get('note', 'not scored')}"
    line = f"{TEST_LABEL}: rsum {test['plain']['rsum']:.2f}"
    if "rerank" in test:
        line += f", re-ranked {test['rerank']['rsum']:.2f} ({_describe(test['choice'])}, chosen on val)"
    return line


def _describe(choice: dict[str, int]) -> str:
    return f"K {choice['k_i2t']} | K {choice['k_t2i']}, K' {choice['k_text']}"


# ---------------------------------------------------------------------------------------- SDML
def score_sdml_trials(trial_dirs: dict[str, str], dataset_uri: str, n_classes: int, projection: str,
                      projection_sha256: str, device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """Test anchor mAP of each modality's chosen trial and the test mAP of every ordered pair.

    Each chosen trial's selected model (its ``model.pt``) encodes its modality's test split; the
    embeddings are written to that trial's directory (``embeddings/test.parquet``) and scored as
    the training job scores a run (docs/metrics.md).
    """
    import torch

    torch.set_num_threads(threads)
    dev = resolve_device(device)  # "auto": CUDA when this task sees its GPU, else CPU
    ds = open_dataset(dataset_uri, validate=False)
    P = load_projection(projection, expected_sha256=projection_sha256).copy()  # (d, c), writable
    emb: evaluate.Embeddings = {}
    for m, directory in trial_dirs.items():
        store = RunStore(directory)
        payload = store.load_model(m)
        model = SDMLAutoencoder(**payload["model_config"])
        model.load_state_dict(payload["state_dict"])
        model.to(dev).eval()
        split = ds.read_split(m, "test")
        codes = model.encode(torch.tensor(split.features, device=dev)).cpu().numpy()  # (n, d)
        store.write_embeddings(m, "test", split.ids, split.labels, codes)
        emb[m] = (split.ids, split.labels, codes)
    out: dict[str, Any] = {"label": TEST_LABEL, "split": "test",
                           "anchor_map": {m: anchor_map(e[2], e[1], P) for m, e in emb.items()}}
    mods = list(emb)
    if len(mods) < 2:
        return {**out, "note": "one modality: no cross-modal pair to score"}
    maps = evaluate.pair_maps(emb, evaluate.all_pairs(mods))
    metrics = evaluate.build_metrics(maps, mods, n_test={m: len(emb[m][0]) for m in mods})
    return {**out, "map": metrics.map, "map_mean": metrics.map_mean,
            "note": "each modality's chosen trial (its selected epoch), not retrained"}


def sdml_test(per: dict[str, dict[str, Any]], info: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """best.json's ``cross_modal`` of an SDML sweep: the chosen combination scored once."""
    dirs = {m: entry["trial_dir"] for m, entry in per.items()}
    return run_once(score_sdml_trials, info, dirs, info["dataset"]["uri"], info["dataset"]["n_classes"],
                    str(sweep_dir / info["projection"]["file"]), info["projection"]["sha256"])


def sdml_summary(test: dict[str, Any]) -> str:
    """One line for summary.md and the console."""
    anchors = ", ".join(f"{m} {v:.4f}" for m, v in test.get("anchor_map", {}).items())
    line = f"{TEST_LABEL}: anchor mAP {anchors}"
    if "map_mean" in test:
        line += f"; cross-modal mean mAP {test['map_mean']:.4f}"
    return line
