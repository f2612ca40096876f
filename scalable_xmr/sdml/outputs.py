"""What a trained SDML modality network leaves in its run store: ``model.pt`` (the network of the
selected epoch, its configs and P's digest), the embeddings of its evaluated splits and its training
log, each written atomically. Shared by :class:`~scalable_xmr.sdml.trainer.ModalityTrainer` (and so
a data-parallel rank 0), a population slot (sdml/population.py) and a sweep trial (tuning/).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from scalable_xmr.config import SDMLConfig
from scalable_xmr.io import atomic_write_json
from scalable_xmr.models.sdml import SDMLAutoencoder
from scalable_xmr.sdml.modality_spec import ModalityData, ModalitySpec
from scalable_xmr.store.run_store import RunStore


class SplitRows(Protocol):
    """The rows whose embeddings are written: ids and multi-hot labels by split (ModalityData, or
    what a streaming rank gathered while it encoded them)."""

    ids: dict[str, Any]
    labels: dict[str, torch.Tensor]


def model_payload(model: SDMLAutoencoder, cfg: SDMLConfig, modality: str, best_epoch: int,
                  projection_sha256: str | None) -> dict[str, Any]:
    """What ``model.pt`` holds: the network, its configs and the selected epoch."""
    return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "model_config": model.config(), "sdml_config": cfg.to_dict(), "modality": modality,
            "best_epoch": best_epoch, "projection_sha256": projection_sha256 or ""}


def save_selected(store: RunStore, job: ModalitySpec, model: SDMLAutoencoder, cfg: SDMLConfig,
                  best_epoch: int, data: SplitRows, embeddings: dict[str, torch.Tensor]) -> None:
    """``model.pt`` (``model`` as the network of the selected epoch ``best_epoch``) and the given
    splits' embeddings, each written atomically: what a run or a sweep trial keeps of a network."""
    m = job.modality
    store.save_model(m, model_payload(model, cfg, m, best_epoch, job.projection_sha256))
    for split, emb in embeddings.items():
        store.write_embeddings(m, split, data.ids[split], data.labels[split].cpu().numpy(), emb.cpu().numpy())


def write_run_outputs(store: RunStore, job: ModalitySpec, model: SDMLAutoencoder, cfg: SDMLConfig,
                      best_epoch: int, data: ModalityData, log: dict[str, Any]) -> None:
    """A trained network's outputs in ``store``: :func:`save_selected` with the embeddings of
    ``job.eval_splits``, then the training log ``log`` (ModalityTrainer's and a population
    member's, the same layout)."""
    model.eval()
    with torch.no_grad():
        embeddings = {s: model.encode(data.features[s]) for s in job.eval_splits}
    save_selected(store, job, model, cfg, best_epoch, data, embeddings)
    atomic_write_json(store.train_log_path(job.modality), log)
