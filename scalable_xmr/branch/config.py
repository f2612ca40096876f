"""The typed training options of one image-text branch model (:class:`PairTrainerConfig`).

The schedule (epochs, batch size, lr and its decay) has one owner: the ``schedule`` of each model's
config class (``models/<model>.py``, from its paper). A schedule field left ``None`` here takes
the model's value when the config is built, so the resolved numbers are what is trained, stored
in run.json / result.json / model.pt and logged to MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

from scalable_xmr.config import TrainSchedule, check_patience, from_dict, short_number
from scalable_xmr.errors import InputError
from scalable_xmr.models.registry import BRANCH_MODELS, branch_model_classes

SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "lr_decay_epochs", "lr_decay")
TEXT_STAGE_KEY = "text_epochs"  # schedule key of the models with a text-text branch (MTFN)
COMPRESSION_KEY = "lr_schedule_epochs"  # set by compressed() for sweep trials, never by a user


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
    common = {f.name for f in fields(PairTrainerConfig)} - {"model", *SCHEDULE_KEYS, TEXT_STAGE_KEY,
                                                           COMPRESSION_KEY}
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
    # Sweep trials (compressed()): the image-text epochs of the full schedule whose lr steps this
    # shorter training keeps at the same fractions; 0 = not compressed (a step every lr_decay_epochs).
    lr_schedule_epochs: int = 0
    # Early stopping, per stage (off by default: the papers train every epoch): a stage ends once its
    # selection score (val rsum; MTFN's text-text stage: val tt_r1) has not improved for this many
    # epochs (config.patience_exhausted); an image-text stage that stops hands over to the text-text one.
    patience: int | None = None

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
            (COMPRESSION_KEY, 0),
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
        check_patience(self.patience)
        if self.text_epochs and TEXT_STAGE_KEY not in schedule_keys(self.model):
            raise InputError(f"text_epochs={self.text_epochs}: model {self.model!r} has no text-text "
                             "branch (only mtfn)")
        if self.text_input not in ("auto", "tokens", "features"):
            raise InputError(f"text_input: expected 'auto', 'tokens' or 'features', got {self.text_input!r}")
        if self.lr_schedule_epochs and not 1 <= self.epochs <= self.lr_schedule_epochs:
            raise InputError(f"{COMPRESSION_KEY}={self.lr_schedule_epochs}: a schedule is compressed "
                             f"into fewer epochs, not {self.epochs}")

    def lr_step_epoch(self, k: int) -> int:
        """The stage epoch (0-based) from which the ``k``-th lr step (k >= 1) applies.

        Not compressed: ``k * lr_decay_epochs`` (VSE++'s code: step decay). Compressed from a
        schedule of E = ``lr_schedule_epochs`` epochs into T = ``epochs``: the step moves from
        epoch s = k * lr_decay_epochs to round(s * T / E), rounded half up, and never before
        epoch 1 (the first epoch always trains at ``lr``). A step that lands on or after the end of
        its stage does not happen. T = E gives s itself (the full schedule, unchanged). The
        text-text stage (MTFN) is compressed by the same factor T / E: its default length is half
        the image-text epochs in trials and in the final training alike (default_text_epochs).

        Example:
            >>> vse = PairTrainerConfig("vse", epochs=10, lr_schedule_epochs=30)  # steps at 15 of 30
            >>> vse.lr_step_epoch(1)
            5
            >>> [PairTrainerConfig("mtfn", epochs=7, lr_schedule_epochs=50).lr_step_epoch(k)
            ...  for k in (1, 2, 3, 4)]  # 1.4, 2.8, 4.2, 5.6 of 7
            [1, 3, 4, 6]
        """
        full_at = k * self.lr_decay_epochs
        if not self.lr_schedule_epochs:
            return full_at
        E, T = self.lr_schedule_epochs, self.epochs
        return max(1, (2 * full_at * T + E) // (2 * E))  # floor(s*T/E + 1/2) in integers: exact

    def lr_steps(self, stage_epochs: int) -> list[int]:
        """The epochs of a stage of ``stage_epochs`` epochs at which the lr steps (one entry per
        step: two steps may share an epoch in a very short compressed stage)."""
        if not self.lr_decay_epochs:
            return []
        out: list[int] = []
        while (at := self.lr_step_epoch(len(out) + 1)) < stage_epochs:
            out.append(at)
        return out

    def lr_at(self, stage_epoch: int) -> float:
        """Adam's rate in epoch ``stage_epoch`` (0-based, counted from the start of its stage):
        ``lr`` times ``lr_decay`` once per step that applies by then (:meth:`lr_step_epoch`)."""
        steps = len(self.lr_steps(stage_epoch + 1))
        return self.lr * self.lr_decay**steps

    def describe_lr(self) -> str:
        """Which lr schedule this training runs, for sweep tables, summary.md and MLflow, e.g.
        ``lr ×0.1 after 5 of 10 epochs (full schedule compressed: after 15 of 30 epochs)``."""
        text = self._steps_phrase(self.epochs)
        full = model_schedule(self.model).epochs
        if self.lr_schedule_epochs:
            uncompressed = replace(self, epochs=self.lr_schedule_epochs, lr_schedule_epochs=0)
            full_steps = uncompressed._steps_phrase(self.lr_schedule_epochs)
            steps = full_steps.removeprefix(f"lr ×{self.lr_decay:g} ")
            text += f" (full schedule compressed: {steps})"
        elif self.epochs == full:
            text += " (full schedule)"
        else:
            text += f" (not compressed; {self.model}'s schedule has {full} epochs)"
        if self.text_epochs:
            text += f"; text-text: {self._steps_phrase(self.text_epochs)}"
        return text

    def _steps_phrase(self, stage_epochs: int) -> str:
        """``lr ×0.1 after 5 of 10 epochs``, ``lr ×0.5 every 2 of 10 epochs``, ``lr ×0.5 after
        epochs 1, 3, 4, 6 of 7`` or ``lr constant over 10 epochs``."""
        at = self.lr_steps(stage_epochs)
        of = f"{stage_epochs} epoch{'' if stage_epochs == 1 else 's'}"
        if not at:
            return f"lr constant over {of}"
        decay = f"lr ×{self.lr_decay:g}"
        if len(at) == 1:
            return f"{decay} after {at[0]} of {of}"
        if at == [at[0] * (i + 1) for i in range(len(at))]:
            return f"{decay} every {at[0]} of {of}"
        # a very short compressed stage may take several steps in one epoch: "1 (3 steps)"
        epochs = [f"{e}" if at.count(e) == 1 else f"{e} ({at.count(e)} steps)" for e in dict.fromkeys(at)]
        return f"{decay} after epochs {', '.join(epochs)} of {stage_epochs}"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PairTrainerConfig:
        """Build from a plain dict; unknown keys raise InputError."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise InputError(f"pair trainer config: missing key {missing[0]!r}")
        return from_dict(cls, dict(values), "pair trainer config")


def compressed(cfg: PairTrainerConfig, epochs: int) -> PairTrainerConfig:
    """``cfg`` trained for ``epochs`` image-text epochs: shorter than its schedule, that schedule
    compressed (each lr step at the same fraction of training, :meth:`PairTrainerConfig.lr_step_epoch`);
    as long or longer, ``cfg`` with those epochs and its steps every ``lr_decay_epochs`` as ever.
    ``text_epochs`` is left as it is (the caller's: the sweep gives trials default_text_epochs).

    Example:
        >>> trial = compressed(PairTrainerConfig("vse"), 10)  # VSE++: 30 epochs, x0.1 after 15
        >>> [trial.lr_at(e) / trial.lr for e in (4, 5)]
        [1.0, 0.1]
        >>> trial.describe_lr()
        'lr ×0.1 after 5 of 10 epochs (full schedule compressed: after 15 of 30 epochs)'
        >>> compressed(PairTrainerConfig("vse"), 30) == PairTrainerConfig("vse")
        True
    """
    full = cfg.lr_schedule_epochs or cfg.epochs
    return replace(cfg, epochs=epochs, lr_schedule_epochs=full if 0 < epochs < full else 0)


def stored_trainer(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A trainer config as stored (run.json, checkpoints/job.json) with the defaults of fields
    added since it was written filled in, so a run started before a new field resumes: compare
    ``stored_trainer(saved)`` with the wanted settings, not the raw dicts."""
    if not isinstance(values, Mapping):
        return None if values is None else dict(values)
    filled = {f.name: f.default for f in fields(PairTrainerConfig) if f.default is not MISSING}
    return {**filled, **values}
