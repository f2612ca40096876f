"""A branch model's ``model.pt``: the one writer and the one reader of its format.

A member (or a sweep trial) writes its selected model once, at the end of training
(:func:`write_model_file`); everyone who reads one -- serving, the sweep's final test score, an
MTFN ensemble's b_m -- goes through :func:`read_model_file` (the payload, its format checked) or
:func:`load_branch_model` (the network rebuilt from it). The file is checksummed and
``torch.load(weights_only=True)`` loadable (``store.torchfile``)::

    format          "scalable_xmr.branch_model/1"
    model           the registry name ("vse", "mtfn", "mmca", "vsa")
    state_dict      the selected epoch's tensors, on the CPU
    model_config    the model's config class as a dict
    trainer_config  the PairTrainerConfig it was trained with, as a dict
    vocab_size, image_shape, text_dim   the input sizes it was built for (text_dim: dense text only)
    best_epoch      per stage ("image_text", "text_text"): the 0-based selected epoch, or None
"""

from __future__ import annotations

import os
from typing import Any

import torch

from scalable_xmr.branch.config import PairTrainerConfig
from scalable_xmr.errors import InputError
from scalable_xmr.models.base import BranchModel
from scalable_xmr.models.registry import branch_config, build_branch_model
from scalable_xmr.store import torchfile

MODEL_FORMAT = "scalable_xmr.branch_model/1"


def write_model_file(
    path: str | os.PathLike,
    model: str,
    state_dict: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    trainer_config: dict[str, Any],
    vocab_size: int,
    image_shape: list[int],
    text_dim: int | None,
    best_epoch: dict[str, int | None],
) -> None:
    """Write ``model.pt`` (checksummed, atomically) with the tensors moved to the CPU."""
    payload = {
        "format": MODEL_FORMAT,
        "model": model,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "model_config": model_config,
        "trainer_config": trainer_config,
        "vocab_size": int(vocab_size),
        "image_shape": [int(d) for d in image_shape],
        "text_dim": text_dim,
        "best_epoch": best_epoch,
    }
    torchfile.save(payload, path)


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a branch model's ``model.pt`` (checksum verified, weights only)."""
    payload = torchfile.load(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a branch-model file")
    return payload


def model_from_payload(
    payload: dict[str, Any], device: torch.device | str
) -> tuple[BranchModel, PairTrainerConfig]:
    """The network :func:`read_model_file`'s ``payload`` describes, on ``device``, and its trainer config."""
    name = payload["model"]
    model = build_branch_model(name, branch_config(name, payload["model_config"]),
                               vocab_size=payload["vocab_size"], image_dim=payload["image_shape"][-1],
                               text_dim=payload["text_dim"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device), PairTrainerConfig.from_dict(payload["trainer_config"])


def load_branch_model(
    path: str | os.PathLike, device: torch.device | str
) -> tuple[BranchModel, PairTrainerConfig]:
    """The selected model a training job or trial saved (``model.pt``) and its trainer config."""
    return model_from_payload(read_model_file(path), device)
