"""The typed training options of one image-text branch model (:class:`PairTrainerConfig`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from scalable_xmr.engine.pair_scoring import BRANCH_MODELS, dataclass_from_dict
from scalable_xmr.errors import InputError


@dataclass(frozen=True)
class PairTrainerConfig:
    """Training options of one branch model (defaults from VSE++/MTFN-RR where they exist)."""

    model: str  # "vse", "mtfn", "mmca" or "vsa"
    epochs: int = 30  # VSE++ trains 30 epochs
    batch_size: int = 128  # VSE++ and MTFN-RR
    lr: float = 2e-4  # VSE++
    margin: float | None = None  # None: the model config's margin (0.2 in the papers)
    hinge: str | None = None  # "max" (hardest negative) | "sum"; None: the model config's
    grad_clip: float = 2.0  # VSE++ clips the gradient norm at 2; 0 = off
    warmup_sum_epochs: int = 0  # first epochs with the sum over negatives, then the model's hinge
    seed: int = 0
    lr_decay_epochs: int = 15  # VSE++: lr / 10 after 15 epochs (MTFN-RR: / 2 every 10); 0 = off
    lr_decay: float = 0.1
    text_epochs: int = 0  # MTFN: epochs of the text-text branch (Eq. 7) after the image-text one
    eval_chunk: int = 1024  # images/captions per block when scoring the validation split
    text_input: str = "auto"  # "tokens" | "features" | "auto" (tokens when the data has them)

    def __post_init__(self) -> None:
        if self.model not in BRANCH_MODELS:
            raise InputError(f"model: unknown branch model {self.model!r} (known: {sorted(BRANCH_MODELS)})")
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
        for name in ("lr", "lr_decay", "grad_clip") + (("margin",) if self.margin is not None else ()):
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
        if self.hinge not in (None, "max", "sum"):
            raise InputError(f"hinge: expected 'max' or 'sum', got {self.hinge!r}")
        if self.text_input not in ("auto", "tokens", "features"):
            raise InputError(f"text_input: expected 'auto', 'tokens' or 'features', got {self.text_input!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PairTrainerConfig:
        """Build from a plain dict; unknown keys raise InputError."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise InputError(f"pair trainer config: missing key {missing[0]!r}")
        return dataclass_from_dict(cls, values, "pair trainer config")
