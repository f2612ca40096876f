"""The branch models by name: name -> (model class, config class), and building one from a dict."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from scalable_xmr.config import from_dict
from scalable_xmr.errors import InputError
from scalable_xmr.models.base import BranchModel
from scalable_xmr.models.mmca import MMCA, MMCAConfig
from scalable_xmr.models.mtfn import MTFN, MTFNConfig
from scalable_xmr.models.vsa import VSA, VSAConfig
from scalable_xmr.models.vse import VSE, VSEConfig

BRANCH_MODELS: dict[str, tuple[type[BranchModel], type]] = {
    "vse": (VSE, VSEConfig),
    "mtfn": (MTFN, MTFNConfig),
    "mmca": (MMCA, MMCAConfig),
    "vsa": (VSA, VSAConfig),
}


def branch_model_classes(name: str) -> tuple[type[BranchModel], type]:
    """(model class, config class) of a registered branch model."""
    if name not in BRANCH_MODELS:
        raise InputError(f"model: unknown branch model {name!r} (known: {sorted(BRANCH_MODELS)})")
    return BRANCH_MODELS[name]


def branch_config(name: str, values: Mapping[str, Any] | None = None) -> Any:
    """The model's config dataclass built from a dict (YAML/CLI/Tune); unknown keys raise."""
    _, config_cls = branch_model_classes(name)
    return from_dict(config_cls, dict(values or {}), f"{name} config")


def build_branch_model(
    name: str, config: Any = None, vocab_size: int = 0, image_dim: int = 0, text_dim: int | None = None
) -> BranchModel:
    """Instantiate a branch model; ``text_dim`` selects dense text features instead of tokens."""
    model_cls, config_cls = branch_model_classes(name)
    config = config_cls() if config is None else config
    if not isinstance(config, config_cls):
        raise InputError(f"config: model {name!r} needs a {config_cls.__name__}, got {type(config).__name__}")
    if not isinstance(image_dim, int) or image_dim < 1:
        raise InputError(f"image_dim: must be an integer >= 1, got {image_dim!r}")
    if text_dim is None:
        return model_cls(config, vocab_size, image_dim)
    if "text_dim" not in inspect.signature(model_cls).parameters:
        raise InputError(f"model {name!r} takes token captions only, not dense text features")
    return model_cls(config, vocab_size, image_dim, text_dim=text_dim)
