"""A trained branch member's scores: its similarity matrices, val / test R@K, the target's R@K.

- :func:`score_model` / :func:`score_split`: the image x caption ranking scores and the caption x
  caption scores T2I re-ranking uses (MTFN's S_TT, else the cosine of text embeddings).
- :func:`evaluate_branch`: val plain R@K, the re-ranking grid on val and its choice (K, K'), test
  plain and re-ranked R@K with that choice.
- :func:`evaluate_target`: a VSA member's plain R@K on its target domain (VSA-AE-MMD Table 1).
- :func:`sims_path` / :func:`save_array`: where the matrices go under a member's (or an
  ensemble's) directory, ``sims/{split}.npy`` and ``sims/{split}_text.npy``, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.branch.evaluate import KS, recall_report, rerank_grid, rerank_grid_for, select_rerank
from scalable_xmr.branch.scoring import similarity_matrix, text_cosine_matrix, text_similarity_matrix
from scalable_xmr.branch.trainer import PairTrainer
from scalable_xmr.data.paired import PairedSplit
from scalable_xmr.functional.retrieval import recall_at_k
from scalable_xmr.io import atomic_path
from scalable_xmr.models.base import BranchModel


def sims_path(out_dir: str | os.PathLike, split: str, text: bool = False) -> Path:
    return Path(out_dir) / "sims" / f"{split}{'_text' if text else ''}.npy"


def save_array(path: Path, array: torch.Tensor) -> None:
    """``array`` as ``path`` (.npy, its dtype kept), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array.numpy())


def score_split(trainer: PairTrainer, split: PairedSplit) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(image x caption sim, caption x caption sim, "S_TT" | "cosine") of a split, on the CPU."""
    return score_model(trainer.model, trainer.config, split, trainer.device)


def score_model(
    model: BranchModel, config: PairTrainerConfig, split: PairedSplit, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """:func:`score_split` of a model trained with ``config``.

    T2I re-ranking's text neighbours come from MTFN's trained S_TT, else from the cosine of the
    model's text embeddings (MTFN-RR §3.2; docs/metrics.md) -- never from the caption groups.
    """
    chunk = config.eval_chunk
    sim = similarity_matrix(model, split, chunk, device=device)
    if getattr(model, "has_text_branch", False) and config.text_epochs > 0:
        return sim, text_similarity_matrix(model, split, chunk, device=device), "S_TT"
    return sim, text_cosine_matrix(model, split, chunk, device=device), "cosine"


def evaluate_branch(
    trainer: PairTrainer,
    splits: dict[str, PairedSplit],
    ks: tuple[int, ...] | None,
    k_texts: tuple[int, ...] | None,
    t2i_groups: str,
    sims_dir: str | None,
) -> dict[str, Any]:
    """Val plain R@K, the re-ranking grid on val (``ks`` x ``k_texts``, None: the default grid)
    and its choice, test plain and re-ranked R@K; the matrices go to ``sims_dir`` (None: kept
    nowhere).

    K and K' are chosen on the SOURCE val split, also for a VSA model with a target domain: the
    target's pairs are not available to an unsupervised domain adaptation method.
    """
    val = splits["val"]
    n = val.require_captions_per_image()
    val_sim, val_text, text_source = score_split(trainer, val)
    grid_spec = rerank_grid_for(val.n_images, val.n_captions, ks, k_texts)
    grid = rerank_grid(val_sim, val_text, n, grid_spec, t2i_groups)
    choice = select_rerank(grid)
    test, n_test = {}, n
    if "test" in splits:
        test_split = splits["test"]
        n_test = test_split.require_captions_per_image()
        test_sim, test_text, _ = score_split(trainer, test_split)
        test = recall_report(test_sim, test_text, n_test, choice, t2i_groups)
        if sims_dir is not None:
            save_array(sims_path(sims_dir, "test"), test_sim)
            save_array(sims_path(sims_dir, "test", text=True), test_text)
    if sims_dir is not None:
        save_array(sims_path(sims_dir, "val"), val_sim)
        save_array(sims_path(sims_dir, "val", text=True), val_text)
    val_plain = recall_report(val_sim, val_text, n, None)["plain"]
    return {"val": val_plain, "test": test, "grid": grid, "choice": choice.to_dict(),
            "t2i_groups": t2i_groups, "text_sim": text_source,
            "captions_per_image": n_test if test else n}


def evaluate_target(
    trainer: PairTrainer, target: dict[str, PairedSplit], target_uri: str | None, sims_dir: str | None
) -> dict[str, Any] | None:
    """R@K on the target domain (VSA-AE-MMD Table 1), or None without a scored target split.

    Plain R@1/5/10, medr, meanr and rsum over all images of the target's "test" split, and of
    its "val" split when it has one -- reported only: the epoch and K were selected on the
    SOURCE val split (target pairs are not available in unsupervised domain adaptation), and
    Table 1 does not re-rank. Writes ``sims/target_{test,val}.npy`` (image x caption scores)
    under ``sims_dir`` (None: nowhere).
    """
    scored = [s for s in ("test", "val") if s in target]
    if not scored:
        return None
    out: dict[str, Any] = {"uri": target_uri, "splits": {}}
    for name in scored:
        split = target[name]
        n = split.require_captions_per_image()
        sim = similarity_matrix(trainer.model, split, trainer.config.eval_chunk, device=trainer.device)
        if sims_dir is not None:
            save_array(sims_path(sims_dir, f"target_{name}"), sim)
        out[name] = recall_at_k(sim, n, KS)
        out["splits"][name] = {"images": split.n_images, "captions_per_image": n}
    return out
