"""Search spaces of the sweeps: which hyperparameters each model has, their domains and defaults.

A :class:`SearchSpace` is plain data (no Ray objects) so that it can be checked, counted, printed
and stored in ``sweep.json`` before anything runs; :meth:`SearchSpace.tune_space` turns it into a
Tune ``param_space`` at the last moment.

Three kinds of hyperparameters:

- *tuned*: every trial draws a value (``lam``, ``lr``, ``margin``, ``rank``, ``alpha`` ...);
  a grid multiplies the number of trials, a range is sampled ``num_samples`` times.
- *fixed*: sweepable but not swept by default (``batch_size``, ``hidden``); the base value is used
  unless ``--grid`` / ``--range`` names them.
- *in-trial* (``k``, ``k_text``): the re-ranking K and K' (MTFN-RR Sec. 3.2) are evaluated by every
  trial on its trained model for a whole grid of values, so K never multiplies the trials.

Default spaces (issue 6): SDML -- λ uniform in [0, 1] and lr log-uniform in [1e-5, 1e-3] per
modality (SDML Fig. 5 sweeps λ); branch models -- margin, lr, and the model's own R (MTFN) or α
(MMCA); K in {1, 2, 5, 10, 15, 20} (MTFN-RR Fig. 7b: 1..20, stable beyond K = 6) and K' in
{0, 1, 2, 4, 8}, the grids of ``branch.evaluate`` (K = 1 is the plain ranking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scalable_xmr.branch.evaluate import K_GRID, K_TEXT_GRID
from scalable_xmr.errors import InputError

MODELS = ("sdml", "vse", "mtfn", "mmca", "vsa")
BRANCH_MODELS = ("vse", "mtfn", "mmca", "vsa")


@dataclass(frozen=True)
class Dist:
    """A distribution of one hyperparameter: ``grid`` (values) or ``uniform``/``loguniform``/``int``
    on [low, high] (``int``: every integer in it equally likely; ``log`` spaces them log-uniformly)."""

    kind: str
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def size(self) -> int | None:
        """Number of distinct configurations a grid adds (None for a sampled range)."""
        return len(self.values) if self.kind == "grid" else None

    def describe(self) -> str:
        if self.kind == "grid":
            return "grid " + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.values)
        scale = "log-" if self.log else ""
        what = "integers" if self.kind == "int" else "uniform"
        return f"{scale}{what} [{self.low:g}, {self.high:g}]"

    def to_json(self) -> dict[str, Any]:
        if self.kind == "grid":
            return {"grid": list(self.values)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: type, domain, default distribution and where its value goes."""

    name: str
    kind: type  # int or float
    low: float  # smallest allowed value (exclusive when low_open)
    high: float | None = None  # largest allowed value (None: unbounded)
    low_open: bool = False
    default: Dist | None = None  # None: fixed at the base value unless overridden
    target: str = "trainer"  # sdml | trainer | model | rerank (in-trial)
    help: str = ""
    symbol: str = ""  # the paper's name (λ, R, α, K, K')

    def domain(self) -> str:
        lo = f"({self.low:g}" if self.low_open else f"[{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{lo}, {hi}"

    def check(self, value: Any, where: str) -> Any:
        """``value`` converted to this parameter's type, or InputError naming the domain."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: {self.name} must be a number, got {value!r}") from None
        if self.kind is int:
            if not math.isfinite(number) or number != int(number):
                raise InputError(f"{where}: {self.name} must be an integer, got {value!r}")
            number = int(number)
        bad_low = number <= self.low if self.low_open else number < self.low
        if not math.isfinite(number) or bad_low or (self.high is not None and number > self.high):
            what = f"{self.name} ({self.symbol})" if self.symbol else self.name
            raise InputError(f"{where}: {what} must be in {self.domain()}, got {value!r}")
        return number


_LR = Param("lr", float, 0.0, low_open=True, default=Dist("uniform", low=1e-5, high=1e-3, log=True),
            help="Adam learning rate")
_MARGIN = Param("margin", float, 0.0, default=Dist("uniform", low=0.05, high=0.5), target="model",
                help="hinge margin: VSE++ / MTFN Eq. 5")
# branch.evaluate's K grids (one definition); a trial cuts them to its gallery.
_K = Param("k", int, 1, default=Dist("grid", K_GRID), target="rerank",
           symbol="K", help="re-ranked list length, MTFN-RR Eq. 8-15 (evaluated in-trial)")
_K_TEXT = Param("k_text", int, 0, default=Dist("grid", K_TEXT_GRID), target="rerank",
                symbol="K'", help="neighbour texts of T2I re-ranking, MTFN-RR Eq. 14 (in-trial)")

PARAMS: dict[str, dict[str, Param]] = {
    "sdml": {p.name: p for p in (
        Param("lam", float, 0.0, 1.0, default=Dist("uniform", low=0.0, high=1.0), target="sdml",
              symbol="λ", help="reconstruction vs label loss weight, SDML Eq. 1"),
        Param("lr", float, 0.0, low_open=True, default=Dist("uniform", low=1e-5, high=1e-3, log=True),
              target="sdml", help="Adam learning rate"),
        Param("batch_size", int, 1, target="sdml", help="batch size"),
        Param("hidden", int, 1, target="sdml", help="width of the two hidden layers"),
    )},
    "vse": {p.name: p for p in (_MARGIN, _LR, _K, _K_TEXT)},
    "mtfn": {p.name: p for p in (
        _MARGIN, _LR, _K, _K_TEXT,
        Param("rank", int, 1, default=Dist("int", low=4, high=32, log=True), target="model",
              symbol="R", help="rank of the tensor fusion, MTFN Eq. 3"),
    )},
    "mmca": {p.name: p for p in (
        _MARGIN, _LR, _K, _K_TEXT,
        Param("alpha", float, 0.0, default=Dist("uniform", low=0.0, high=1.0), target="model",
              symbol="α", help="weight of the cross-attention score, MMCA §3.5 S(I,T); Table 6"),
    )},
    "vsa": {p.name: p for p in (
        _MARGIN, _LR, _K, _K_TEXT,
        Param("mmd_weight", float, 0.0, target="model", help="weight of the MMD term, VSA Eq. 12"),
    )},
}


def model_params(model: str) -> dict[str, Param]:
    if model not in PARAMS:
        raise InputError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    return PARAMS[model]


def _param(model: str, name: str, flag: str) -> Param:
    params = model_params(model)
    if name not in params:
        raise InputError(
            f"{flag}: unknown hyperparameter {name!r} for model {model}; "
            f"valid: {', '.join(sorted(params))}"
        )
    return params[name]


def _split_key(text: str, flag: str, form: str) -> tuple[str, str]:
    key, sep, rest = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"{flag} {text!r}: expected {form}")
    return key.strip(), rest.strip()


def parse_grid(model: str, text: str) -> tuple[str, Dist]:
    """``KEY=v1,v2,...`` -> (key, grid); values checked against the parameter's domain."""
    key, rest = _split_key(text, "--grid", "KEY=v1,v2,...")
    param = _param(model, key, "--grid")
    raw = [v.strip() for v in rest.split(",") if v.strip()]
    values = tuple(dict.fromkeys(param.check(v, f"--grid {text}") for v in raw))  # unique, in order
    return key, Dist("grid", values)


def parse_range(model: str, text: str) -> tuple[str, Dist]:
    """``KEY=lo:hi[:log]`` -> (key, distribution); both ends checked against the domain."""
    key, rest = _split_key(text, "--range", "KEY=lo:hi[:log]")
    param = _param(model, key, "--range")
    parts = rest.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise InputError(f"--range {text!r}: expected KEY=lo:hi or KEY=lo:hi:log")
    where = f"--range {text}"
    low, high = param.check(parts[0], where), param.check(parts[1], where)
    log = len(parts) == 3
    if param.target == "rerank":
        if log:
            raise InputError(f"{where}: {key} is evaluated in-trial on every integer of the range; "
                             "drop ':log'")
        return key, Dist("grid", tuple(range(low, high + 1)))  # empty when low > high
    if log and low <= 0:
        raise InputError(f"{where}: a log range needs lo > 0, got {parts[0]}")
    if low > high or (param.kind is float and low == high):
        raise InputError(f"{where}: lo must be below hi")
    return key, Dist("int" if param.kind is int else "uniform", low=low, high=high, log=log)


@dataclass(frozen=True)
class SearchSpace:
    """The swept hyperparameters of one model (plus the in-trial K grids of branch models)."""

    model: str
    dists: dict[str, Dist] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Param]:
        return model_params(self.model)

    def tuned(self) -> dict[str, Dist]:
        """Distributions that Tune samples (one value per trial)."""
        return {k: d for k, d in self.dists.items() if self.params[k].target != "rerank"}

    def in_trial(self) -> dict[str, tuple[int, ...]]:
        """In-trial grids (k, k_text) evaluated by every trial after training."""
        return {k: tuple(d.values) for k, d in self.dists.items() if self.params[k].target == "rerank"}

    def n_configurations(self, num_samples: int, n_groups: int = 1) -> int:
        """How many trials Tune will run: num_samples x grid sizes x groups (modalities)."""
        n = num_samples * n_groups
        for d in self.tuned().values():
            n *= d.size() or 1
        return n

    def check_nonempty(self, num_samples: int, n_groups: int = 1) -> int:
        """The number of trials, or InputError when the space has zero configurations."""
        empty = [k for k, d in self.dists.items() if d.kind == "grid" and not d.values]
        reasons = [f"{k} has an empty grid" for k in empty]
        if num_samples < 1:
            reasons.append(f"--num-samples is {num_samples}")
        if n_groups < 1:
            reasons.append("no modality selected")
        if reasons:
            raise InputError(f"the search space has zero configurations: {'; '.join(reasons)}")
        return self.n_configurations(num_samples, n_groups)

    def tune_space(self) -> dict[str, Any]:
        """The Tune ``param_space`` entries of the tuned hyperparameters."""
        from ray import tune

        out: dict[str, Any] = {}
        for name, d in self.tuned().items():
            if d.kind == "grid":
                out[name] = tune.grid_search(list(d.values))
            elif d.kind == "int":  # tune's randint excludes its upper end: hi + 1 keeps it
                fn = tune.lograndint if d.log else tune.randint
                out[name] = fn(int(d.low), int(d.high) + 1)
            else:
                out[name] = (tune.loguniform if d.log else tune.uniform)(d.low, d.high)
        return out

    def sample(self, num_samples: int, seed: int) -> list[dict[str, Any]]:
        """Every configuration Tune would run, drawn here (seeded): the grids' product in order,
        ``num_samples`` draws of the sampled ranges for each grid point. A population sweep needs
        its configurations before Tune starts, to group them (tuning/population_trial.py)."""
        import itertools

        import numpy as np

        rng = np.random.default_rng([seed, 16])
        tuned = self.tuned()
        grids = {k: d.values for k, d in tuned.items() if d.kind == "grid"}
        ranges = {k: d for k, d in tuned.items() if d.kind != "grid"}
        out = []
        for point in itertools.product(*grids.values()):
            for _ in range(num_samples):
                config = dict(zip(grids, point, strict=True))
                for key, d in ranges.items():
                    high = d.high + 1 if d.kind == "int" else d.high  # int: both ends included
                    lo, hi = (math.log(d.low), math.log(high)) if d.log else (d.low, high)
                    value = float(rng.uniform(lo, hi))
                    value = math.exp(value) if d.log else value
                    config[key] = min(int(math.floor(value)), int(d.high)) if d.kind == "int" else value
                out.append(config)
        return out

    def swept(self) -> list[str]:
        """Hyperparameters that take more than one value across trials (for plots)."""
        return [k for k, d in self.tuned().items() if d.kind != "grid" or len(d.values) > 1]

    def describe(self) -> list[str]:
        return [f"{k:<11} {d.describe():<34} {self.params[k].help}" for k, d in self.dists.items()]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "dists": {k: d.to_json() for k, d in self.dists.items()}}


def build_space(model: str, grids: tuple[str, ...] | list[str] = (),
                ranges: tuple[str, ...] | list[str] = ()) -> SearchSpace:
    """The default space of ``model`` with ``--grid`` / ``--range`` overrides applied."""
    params = model_params(model)
    dists = {name: p.default for name, p in params.items() if p.default is not None}
    seen: set[str] = set()
    for text, parse in [*((g, parse_grid) for g in grids), *((r, parse_range) for r in ranges)]:
        key, dist = parse(model, text)
        if key in seen:
            raise InputError(f"{key} is given twice in --grid/--range; give it once")
        seen.add(key)
        dists[key] = dist
    return SearchSpace(model, dists)
