"""The typed training options of one image-text branch model (:class:`PairTrainerConfig`).

The schedule (epochs, batch size, lr and its decay) has one owner: the ``schedule`` of each model's
config class (``models/<model>.py``, from its paper). A schedule field left ``None`` here takes
the model's value when the config is built, so the resolved numbers are what is trained, stored
in run.json / result.json / model.pt and logged to MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from scalable_xmr.config import TrainSchedule, from_dict, short_number
from scalable_xmr.errors import InputError
from scalable_xmr.models.registry import BRANCH_MODELS, branch_model_classes

SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "lr_decay_epochs", "lr_decay")
TEXT_STAGE_KEY = "text_epochs"  # schedule key of the models with a text-text branch (MTFN)


def model_schedule(model: str) -> TrainSchedule:
    """The training schedule the branch model's config class owns (its paper's values)."""
    return branch_model_classes(model)[1].schedule


def schedule_keys(model: str) -> tuple[str, ...]:
    """The schedule keys a flag or ``--set`` may give for ``model`` (``text_epochs``: MTFN only)."""
    has_text_stage = getattr(branch_model_classes(model)[0], "has_text_branch", False)
    return SCHEDULE_KEYS + ((TEXT_STAGE_KEY,) if has_text_stage else ())


def default_text_epochs(model: str, epochs: int, one_caption: bool = False) -> int:
    """The jobs' default ``text_epochs``: MTFN-RR §4.1 trains S_TT after S_IT without saying for
    how long; we give it half the image-text epochs (at least 1). 0 for other models, and for
    data with one caption per image (no caption pairs to train S_TT on)."""
    if TEXT_STAGE_KEY not in schedule_keys(model) or one_caption:
        return 0
    return max(1, epochs // 2)


def schedule_help(key: str) -> str:
    """Each model's default of schedule ``key`` for --help: ``vse 30, mtfn 50, mmca 20, vsa 40``;
    for ``epochs`` also every model's whole schedule, its source and what we chose where the
    paper is silent."""
    values = ", ".join(f"{m} {short_number(getattr(model_schedule(m), key))}" for m in BRANCH_MODELS)
    if key != "epochs":
        return f"default per model: {values}"
    schedules = "; ".join(f"{m}: {model_schedule(m).describe()}" for m in BRANCH_MODELS)
    return (f"default per model: {values}. Each model trains on its own paper's schedule unless a "
            f"flag or --set overrides it -- {schedules}")


def model_keys(model: str) -> set[str]:
    """The keys of ``model``'s own config class (its architecture and loss: margin, hinge ...)."""
    return {f.name for f in fields(branch_model_classes(model)[1])}


def trainer_keys(model: str) -> set[str]:
    """The :class:`PairTrainerConfig` keys a user may set for ``model`` (its schedule included)."""
    common = {f.name for f in fields(PairTrainerConfig)} - {"model", *SCHEDULE_KEYS, TEXT_STAGE_KEY}
    return common | set(schedule_keys(model))


def split_values(model: str, values: Mapping[str, Any], source: str,
                 exclude: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` as (trainer values, model-config values): every key has exactly one owner, the
    model's config class or :class:`PairTrainerConfig`. The one place that decides it, for the CLI,
    best.json, ``--set`` and sweep trials. An unknown key (or one in ``exclude``) raises, naming
    ``source`` and the keys ``model`` knows."""
    owned_by_model, owned_by_trainer = model_keys(model), trainer_keys(model) - set(exclude)
    trainer, model_values = {}, {}
    for key, value in values.items():
        if key in owned_by_model:
            model_values[key] = value
        elif key in owned_by_trainer:
            trainer[key] = value
        elif key == TEXT_STAGE_KEY:
            raise InputError(f"{source} {key}: not a schedule key of {model} (schedule keys: "
                             f"{', '.join(schedule_keys(model))}; {key} is mtfn's)")
        else:
            known = ", ".join(sorted(owned_by_model | owned_by_trainer))
            raise InputError(f"{source} {key}: not a config key of {model} or of its trainer "
                             f"(known: {known})")
    return trainer, model_values


@dataclass(frozen=True)
class PairTrainerConfig:
    """Training options of one branch model; schedule fields default to the model's (``None``)."""

    model: str  # "vse", "mtfn", "mmca" or "vsa"
    epochs: int | None = None  # image-text epochs; None: the model's schedule (models/<model>.py)
    batch_size: int | None = None  # None: the model's schedule
    lr: float | None = None  # Adam's initial rate; None: the model's schedule
    grad_clip: float = 2.0  # VSE++ clips the gradient norm at 2 (the other papers say nothing); 0 = off
    warmup_sum_epochs: int = 0  # first epochs with the sum over negatives, then the model's hinge
    seed: int = 0
    lr_decay_epochs: int | None = None  # lr *= lr_decay every this many epochs; 0 = off; None: model's
    lr_decay: float | None = None  # None: the model's schedule
    text_epochs: int = 0  # MTFN: epochs of the text-text branch (Eq. 7) after the image-text one
    eval_chunk: int = 1024  # images/captions per block when scoring the validation split
    text_input: str = "auto"  # "tokens" | "features" | "auto" (tokens when the data has them)

    def __post_init__(self) -> None:
        if self.model not in BRANCH_MODELS:
            raise InputError(f"model: unknown branch model {self.model!r} (known: {sorted(BRANCH_MODELS)})")
        schedule = model_schedule(self.model)
        for name in SCHEDULE_KEYS:  # None = the model's own value, resolved once, here
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(schedule, name))
        for name, low in (
            ("epochs", 0),
            ("batch_size", 2),
            ("lr_decay_epochs", 0),
            ("warmup_sum_epochs", 0),
            ("text_epochs", 0),
            ("eval_chunk", 1),
            ("seed", 0),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InputError(f"{name}: must be an integer >= {low}, got {v!r}")
        for name in ("lr", "lr_decay", "grad_clip"):
            v = getattr(self, name)
            if (
                not isinstance(v, int | float)
                or isinstance(v, bool)
                or not math.isfinite(v)
                or v < 0
                or (name in ("lr", "lr_decay") and v == 0)
            ):
                raise InputError(
                    f"{name}: must be a finite number "
                    f"{'> 0' if name in ('lr', 'lr_decay') else '>= 0'}, got {v!r}"
                )
        if self.text_epochs and TEXT_STAGE_KEY not in schedule_keys(self.model):
            raise InputError(f"text_epochs={self.text_epochs}: model {self.model!r} has no text-text "
                             "branch (only mtfn)")
        if self.text_input not in ("auto", "tokens", "features"):
            raise InputError(f"text_input: expected 'auto', 'tokens' or 'features', got {self.text_input!r}")

    def lr_at(self, stage_epoch: int) -> float:
        """Adam's rate in epoch ``stage_epoch`` (0-based, counted from the start of its stage):
        ``lr`` times ``lr_decay`` once per ``lr_decay_epochs`` epochs (VSE++'s code: step decay)."""
        steps = stage_epoch // self.lr_decay_epochs if self.lr_decay_epochs else 0
        return self.lr * self.lr_decay**steps

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PairTrainerConfig:
        """Build from a plain dict; unknown keys raise InputError."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise InputError(f"pair trainer config: missing key {missing[0]!r}")
        return from_dict(cls, dict(values), "pair trainer config")
