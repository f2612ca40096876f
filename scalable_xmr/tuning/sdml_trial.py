"""The SDML trial: one modality, one configuration, scored on its own validation split alone.

SDML sweeps are separable (docs/metrics.md, issue 6): P fixes the common space, so a modality's
network is judged without any other modality by

- its validation label loss, mean ‖Pᵀh − y‖₂ (the second term of SDML Eq. 1), and
- the *anchor mAP*: mAP of its validation embeddings retrieving the class anchors, the c columns
  of P, where anchor j carries label j alone (gallery labels = the identity).

Each trial runs the same :meth:`~scalable_xmr.sdml.trainer.ModalityTrainer.fit` loop as the
training job (scoring and reporting from its ``on_epoch`` hook), with ``run_dir`` = the trial's
own directory (holding a link to the sweep's one ``projection.arrow``), so it reads only its
modality's train and val splits and P -- never its test split: selection is on validation alone.
At its last epoch the trial writes the selected epoch's (lowest validation label loss, as in
training) model (``model.pt``) and val embeddings: at its end the sweep encodes the chosen trials'
test splits with those models and scores the chosen combination cross-modally, once
(``tuning/final_score.py``), without retraining. When the scheduler may stop a trial before its
last epoch (ASHA), the trial also writes them whenever the selected epoch changes, so a stopped
trial has its model too: a write of its weights per improving epoch (46 MB for a 4096-d input,
~0.15 s with its checksum here). A FIFO sweep runs every trial to its end and skips those writes.

The trial reads its modality's data through the worker's cache (data/modality/cache.py: Tune
reuses trial actors, so a worker decodes each modality's table once per sweep, not per trial), and
does not checkpoint its last epoch (nothing resumes a trial that has ended; Tune would copy the
checkpoint into its storage on top).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import scalable_xmr.tuning.trial_io as trial_io
from scalable_xmr.config import SDMLConfig, from_dict
from scalable_xmr.functional.retrieval import mean_average_precision
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.outputs import save_selected
from scalable_xmr.sdml.trainer import ModalityTrainer

# Tune result key -> (MLflow metric name, direction) for the two SDML sweep metrics.
SDML_METRICS = {"anchor_map": ("best_anchor_map", "max"), "label_loss": ("best_val_label_loss", "min")}


@dataclass(frozen=True)
class SDMLTrialSetup:
    """Everything a trial needs besides its configuration (paths, not arrays)."""

    sweep_dir: str  # absolute; holds projection.arrow
    dataset_uri: str  # absolute path or URI
    n_classes: int
    projection_sha256: str
    base: dict[str, Any] = field(default_factory=dict)  # SDMLConfig values every trial shares
    device: str = "auto"
    threads: int = 1
    # The scheduler may stop a trial before its last epoch (ASHA): write the selected model each
    # time it changes, not only at the end.
    save_each_selected: bool = True
    # --workers-per-modality W > 1: the trial trains on W Ray Train workers, each asking these
    # resources (tuning/sdml_workers_trial.py)
    workers: int = 1
    resources_per_worker: dict[str, float] | None = None


def anchor_map(emb: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
               P: torch.Tensor | np.ndarray) -> float:
    """mAP of ``emb`` (n, d) retrieving the c class anchors = columns of ``P`` (d, c).

    ``labels`` is (n, c) multi-hot; anchor j is relevant to a row iff the row has label j.
    Unlabeled rows are left out (they have no relevant anchor); NaN when no row is labeled.
    """
    emb, labels = torch.as_tensor(emb), torch.as_tensor(labels)
    labeled = labels.sum(1) > 0
    if not bool(labeled.any()):
        return float("nan")
    anchors = torch.as_tensor(P).T  # (c, d): one anchor per class
    eye = torch.eye(anchors.shape[0])  # (c, c): anchor j has label j
    return mean_average_precision(emb[labeled], anchors, labels[labeled], eye)


def start_trial_job(setup, directory: Path, modality: str,
                    cfg: SDMLConfig) -> tuple[ModalitySpec, Path, dict[str, Any]]:
    """A trial's run-shaped directory (the sweep's P linked in), its job (val split only), its
    checkpoint directory and the Tune checkpoint state it resumes from ({} when new); the start
    is logged. Shared by the one-configuration and the population trial."""
    trial_io.link_file(Path(setup.sweep_dir) / "projection.arrow", directory / "projection.arrow")
    job = ModalitySpec(run_dir=str(directory), modality=modality, config=cfg,
                      dataset_uri=setup.dataset_uri, n_classes=setup.n_classes,
                      projection_sha256=setup.projection_sha256, device=setup.device,
                      num_threads=setup.threads, eval_splits=("val",), reuse_data=True)
    ckpt_dir = directory / "modalities" / modality / "checkpoints"
    state = trial_io.install_tune_checkpoint(ckpt_dir) or {}
    trial_io.log_start(directory, state.get("epoch"))
    return job, ckpt_dir, state


def trial_config(config: dict[str, Any], setup: SDMLTrialSetup) -> tuple[str, SDMLConfig]:
    """The modality of a trial's Tune ``config`` and its SDMLConfig (the rest of ``config`` over
    the sweep's base)."""
    modality = config["modality"]
    values = {k: v for k, v in config.items() if k != "modality"}
    return modality, from_dict(SDMLConfig, {**setup.base, **values},
                               source=f"trial config {config}").resolved(modality)


def epoch_metrics(trainer: ModalityTrainer, stats, val_map: float, best_map: float,
                  train_seconds: float) -> dict[str, Any]:
    """What a trial reports to Tune after an epoch (one worker or W: the same keys)."""
    return {
        "epoch": trainer.epoch, "loss_train": stats.loss_train, "loss_recon": stats.loss_recon,
        "loss_label": stats.loss_label, "val_label_loss": stats.loss_val_label,
        "val_anchor_map": val_map, "best_epoch": trainer.best_epoch,
        "best_val_label_loss": trainer.best_val, "best_anchor_map": best_map,
        "train_seconds": train_seconds, "n_train": len(trainer.x["train"]),
    }


def sdml_trial(config: dict[str, Any], setup: SDMLTrialSetup) -> None:
    """Tune function trainable: train ``config["modality"]`` with the rest of ``config``."""
    start = time.perf_counter()
    modality, cfg = trial_config(config, setup)
    directory = trial_io.trial_dir(setup.sweep_dir, trial_io.current_trial_id())
    job, ckpt_dir, state = start_trial_job(setup, directory, modality, cfg)
    trainer = ModalityTrainer(job)
    best_map = float(state.get("best_anchor_map", float("nan")))
    train_seconds = float(state.get("train_seconds", 0.0))

    def on_epoch(stats, checkpointed: bool) -> None:
        """Score the epoch on val against P's anchors and report it (the job's loop calls this)."""
        nonlocal best_map, train_seconds
        train_seconds += stats.seconds
        val_emb = trainer.val_embeddings.cpu()  # this epoch's, from its validation pass
        val_map = anchor_map(val_emb, trainer.data.labels["val"].cpu(), trainer.P.cpu())
        last = trainer.done  # its epochs, or patience (a sweep's --set patience=N) ran out
        if trainer.best_epoch == trainer.epoch:  # the selected model changed
            best_map = val_map
            if setup.save_each_selected and not last:  # the last epoch writes it below
                save_selected(trainer.store, trainer.job, trainer.model, cfg, trainer.best_epoch,
                              trainer.data, {"val": val_emb})
        metrics = epoch_metrics(trainer, stats, val_map, best_map, train_seconds)
        if last:  # before the last report: Tune may end the trial on it
            trainer.write_outputs()  # the selected epoch's model and val embeddings, the log
            metrics["trial_seconds"] = time.perf_counter() - start
        trial_io.report(metrics, ckpt_dir if checkpointed else None,
                        {"epoch": trainer.epoch, "best_anchor_map": best_map, "train_seconds": train_seconds})

    trainer.fit(on_epoch, checkpoint_at_end=False)
