"""Training and scoring of one image-text branch model (no Ray, no MLflow inside).

- :func:`build_branch_model`: the model registry ("vse", "mtfn", "mmca", "vsa"; the last two are
  imported lazily from ``models/mmca.py`` and ``models/vsa.py``).
- :class:`PairTensors`: a :class:`~scalable_xmr.data.paired.PairedSplit` as tensors on a device.
- :func:`encode_gallery`, :func:`similarity_matrix`, :func:`text_similarity_matrix`: chunked
  scoring of every image against every caption (and caption against caption for MTFN's S_TT).
- :class:`PairTrainer`: the epoch loop with validation R@K, best-rsum model selection, a
  callback per epoch and resumable checkpoints. MTFN's text-text branch trains after the
  image-text branch (``text_epochs``), initialised from its best state (MTFN-RR §4.1).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from scalable_xmr.data.paired import PairedSplit
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.functional.contrastive import hinge_max_violation, hinge_sum
from scalable_xmr.io import atomic_path
from scalable_xmr.models.base import BranchModel, Repr

__all__ = [
    "PairTrainerConfig",
    "PairTrainer",
    "PairTensors",
    "build_branch_model",
    "branch_config",
    "branch_model_classes",
    "encode_gallery",
    "similarity_matrix",
    "text_similarity_matrix",
    "BRANCH_MODELS",
]

# name -> (module, model class, config class)
BRANCH_MODELS: dict[str, tuple[str, str, str]] = {
    "vse": ("scalable_xmr.models.vse", "VSE", "VSEConfig"),
    "mtfn": ("scalable_xmr.models.mtfn", "MTFN", "MTFNConfig"),
    "mmca": ("scalable_xmr.models.mmca", "MMCA", "MMCAConfig"),
    "vsa": ("scalable_xmr.models.vsa", "VSA", "VSAConfig"),
}


def branch_model_classes(name: str) -> tuple[type[BranchModel], type]:
    """(model class, config class) of a registered branch model, imported on first use."""
    if name not in BRANCH_MODELS:
        raise InputError(f"model: unknown branch model {name!r} (known: {sorted(BRANCH_MODELS)})")
    module, model_cls, config_cls = BRANCH_MODELS[name]
    mod = importlib.import_module(module)
    return getattr(mod, model_cls), getattr(mod, config_cls)


def branch_config(name: str, values: Mapping[str, Any] | None = None) -> Any:
    """The model's config dataclass built from a dict (YAML/CLI/Tune); unknown keys raise."""
    _, config_cls = branch_model_classes(name)
    return _dataclass_from_dict(config_cls, values or {}, f"{name} config")


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


def _dataclass_from_dict(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (known: {sorted(known)})")
    return cls(**values)


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
        return _dataclass_from_dict(cls, values, "pair trainer config")


@dataclass(frozen=True, eq=False)
class PairTensors:
    """A paired split on a device: images, texts (tokens or dense features), caption -> image."""

    images: torch.Tensor  # (N, dim) or (N, n_regions, dim) float32
    texts: torch.Tensor  # (M, T) int64 tokens, or (M, D) float32 features
    lengths: torch.Tensor  # (M,) int64 (ones for dense features)
    caption_image_index: torch.Tensor  # (M,) int64, non-decreasing
    captions_per_image: int | None

    @classmethod
    def from_split(
        cls, split: PairedSplit, device: torch.device | str = "cpu", text_input: str = "auto"
    ) -> PairTensors:
        kind = text_kind(split, text_input)
        if kind == "tokens":
            texts = torch.as_tensor(split.tokens, dtype=torch.long)
            lengths = torch.as_tensor(split.lengths, dtype=torch.long)
        else:
            texts = torch.as_tensor(split.text_features, dtype=torch.float32)
            lengths = torch.ones(split.n_captions, dtype=torch.long)
        return cls(
            images=torch.as_tensor(split.images, dtype=torch.float32).to(device),
            texts=texts.to(device),
            lengths=lengths.to(device),
            caption_image_index=torch.as_tensor(split.caption_image_index).to(device),
            captions_per_image=split.captions_per_image,
        )

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_captions(self) -> int:
        return int(self.texts.shape[0])


def text_kind(split: PairedSplit, text_input: str = "auto") -> str:
    """Which text column a model reads: "tokens" or "features" (InputError if absent)."""
    has = {"tokens": split.tokens is not None, "features": split.text_features is not None}
    if text_input == "auto":
        return "tokens" if has["tokens"] else "features"
    if text_input not in has:
        raise InputError(f"text_input: expected 'auto', 'tokens' or 'features', got {text_input!r}")
    if not has[text_input]:
        raise InputError(f"text_input={text_input!r}: split {split.split!r} has no caption {text_input}")
    return text_input


def _as_tensors(
    data: PairedSplit | PairTensors, model: BranchModel, device: torch.device | str | None
) -> PairTensors:
    """A split as tensors on ``device`` (default: the model's), with the text kind the model reads."""
    if isinstance(data, PairTensors):
        return data
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    kind = "features" if getattr(model, "text_dim", None) is not None else "tokens"
    return PairTensors.from_split(data, device, kind)


def _cat(parts: list[Repr]) -> Repr:
    """Concatenate chunk representations (tensors or tuples of tensors) along dim 0.

    Tensors whose other dims differ between chunks (e.g. per-word features of chunks with
    different longest captions) are zero-padded (False for masks) to the largest size first.
    """
    first = parts[0]
    if isinstance(first, torch.Tensor):
        if all(p.shape[1:] == first.shape[1:] for p in parts):
            return torch.cat(parts, dim=0)
        size = [max(p.shape[d] for p in parts) for d in range(1, first.dim())]
        out = first.new_zeros((sum(len(p) for p in parts), *size))
        start = 0
        for p in parts:
            out[(slice(start, start + len(p)), *(slice(0, n) for n in p.shape[1:]))] = p
            start += len(p)
        return out
    if isinstance(first, tuple | list):
        return tuple(_cat([p[i] for p in parts]) for i in range(len(first)))
    return first  # None or a constant shared by every chunk


def _rows(repr_: Repr, start: int, end: int) -> Repr:
    if isinstance(repr_, torch.Tensor):
        return repr_[start:end]
    if isinstance(repr_, tuple | list):
        return tuple(_rows(r, start, end) for r in repr_)
    return repr_


class _EvalMode:
    """Context manager: model.eval() and no_grad, restoring the training flag afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def encode_gallery(
    model: BranchModel, data: PairedSplit | PairTensors, chunk: int = 1024, device: torch.device | None = None
) -> tuple[Repr, Repr]:
    """(image representations, caption representations) of a whole split, encoded in chunks."""
    data = _as_tensors(data, model, device)
    with _EvalMode(model):
        imgs = [model.encode_images(data.images[s : s + chunk]) for s in range(0, data.n_images, chunk)]
        txts = [
            model.encode_texts(data.texts[s : s + chunk], data.lengths[s : s + chunk])
            for s in range(0, data.n_captions, chunk)
        ]
    return _cat(imgs), _cat(txts)


def similarity_matrix(
    model: BranchModel,
    data: PairedSplit | PairTensors,
    chunk: int = 1024,
    device: torch.device | None = None,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Scores of every image against every caption, ``(N_img, N_cap)`` float32 on ``out_device``.

    Representations are encoded once; ``similarity`` runs on (chunk × chunk) blocks so models
    whose score is not a dot product (MTFN, MMCA) keep bounded memory.
    """
    data = _as_tensors(data, model, device)
    img_repr, txt_repr = encode_gallery(model, data, chunk)
    out = torch.empty(data.n_images, data.n_captions, dtype=torch.float32, device=out_device)
    with _EvalMode(model):
        for i in range(0, data.n_images, chunk):
            img_block = _rows(img_repr, i, i + chunk)
            for j in range(0, data.n_captions, chunk):
                block = model.similarity(img_block, _rows(txt_repr, j, j + chunk))
                out[i : i + chunk, j : j + chunk] = block.to(out_device, torch.float32)
    return out


def _encode_texts_tt(model: BranchModel, data: PairTensors, chunk: int) -> Repr:
    parts = [
        model.encode_texts_tt(data.texts[s : s + chunk], data.lengths[s : s + chunk])
        for s in range(0, data.n_captions, chunk)
    ]
    return _cat(parts)


def text_similarity_matrix(
    model: BranchModel,
    data: PairedSplit | PairTensors,
    chunk: int = 1024,
    device: torch.device | None = None,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """S_TT of every caption against every caption, ``(N_cap, N_cap)`` (MTFN Eq. 6)."""
    if not getattr(model, "has_text_branch", False):
        raise InputError(f"model {model.name!r} has no text-text branch (only MTFN has S_TT)")
    data = _as_tensors(data, model, device)
    out = torch.empty(data.n_captions, data.n_captions, dtype=torch.float32, device=out_device)
    with _EvalMode(model):
        reprs = _encode_texts_tt(model, data, chunk)
        for i in range(0, data.n_captions, chunk):
            for j in range(0, data.n_captions, chunk):
                block = model.text_similarity(_rows(reprs, i, i + chunk), _rows(reprs, j, j + chunk))
                out[i : i + chunk, j : j + chunk] = block.to(out_device, torch.float32)
    return out


def _nearest_text_recall(model: BranchModel, data: PairTensors, chunk: int) -> float:
    """% of captions whose most S_TT-similar other caption shares its image (chunked argmax)."""
    with _EvalMode(model):
        reprs = _encode_texts_tt(model, data, chunk)
        hits = torch.zeros((), device=data.texts.device)
        for i in range(0, data.n_captions, chunk):
            block = torch.cat(
                [
                    model.text_similarity(_rows(reprs, i, i + chunk), _rows(reprs, j, j + chunk))
                    for j in range(0, data.n_captions, chunk)
                ],
                dim=1,
            )  # (B, M)
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, rows + i] = -math.inf  # never the caption itself
            nearest = block.argmax(dim=1)  # (B,)
            index = data.caption_image_index
            hits += (index[nearest] == index[i : i + block.shape[0]]).sum()
    return float(hits) * 100.0 / data.n_captions


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


EpochCallback = Callable[[dict[str, Any]], None]


class PairTrainer:
    """Train one branch model on a paired split, selecting the epoch with the best val rsum.

    Data live as tensors on ``device``; a batch is an index into them (no host copies per step
    beyond the GRU's B packing lengths). An epoch visits every training caption once with its
    image (VSE++); pairs of the same image in a batch are not counted as negatives. With
    ``text_epochs > 0`` (MTFN) the text-text branch then trains for that many epochs, initialised
    from the best image-text state, on pairs of two captions of one image (MTFN-RR Eq. 7), and is
    selected by the val "nearest caption shares the image" rate (``tt_r1``).

    ``fit(on_epoch)`` calls ``on_epoch(record)`` after each epoch with ``self.epoch`` already
    advanced, so a checkpoint saved from the callback resumes at the next epoch.
    """

    def __init__(
        self,
        config: PairTrainerConfig,
        model_config: Any,
        train_split: PairedSplit,
        val_split: PairedSplit | None = None,
        device: torch.device | str = "cpu",
        model: BranchModel | None = None,
    ) -> None:
        if not isinstance(config, PairTrainerConfig):
            raise InputError(f"config: expected PairTrainerConfig, got {type(config).__name__}")
        self.config, self.device = config, torch.device(device)
        kind = text_kind(train_split, config.text_input)
        if val_split is not None:
            text_kind(val_split, kind)
            val_split.require_captions_per_image()
            if val_split.images.shape[1:] != train_split.images.shape[1:]:
                raise InputError(
                    f"val_split: image arrays {val_split.images.shape[1:]} differ "
                    f"from train {train_split.images.shape[1:]}"
                )
        torch.manual_seed(config.seed)  # model initialisation
        if model is None:
            model = build_branch_model(
                config.model,
                model_config,
                vocab_size=train_split.vocab_size or 2,  # dense text: a placeholder <pad>, <unk>
                image_dim=train_split.image_dim,
                text_dim=train_split.text_dim if kind == "features" else None,
            )
        self.model = model.to(self.device)
        model_config = getattr(model, "config", model_config)
        self.margin = config.margin if config.margin is not None else getattr(model_config, "margin", 0.2)
        self.hinge = config.hinge or getattr(model_config, "hinge", "max")
        if config.text_epochs and not getattr(model, "has_text_branch", False):
            raise InputError(
                f"text_epochs={config.text_epochs}: model {config.model!r} has no "
                f"text-text branch (only mtfn)"
            )
        self.train_data = PairTensors.from_split(train_split, self.device, kind)
        self.val_data = None if val_split is None else PairTensors.from_split(val_split, self.device, kind)
        self.total_epochs = config.epochs + config.text_epochs
        self.epoch, self.stage = 0, "image_text"
        self.optimizer = self._make_optimizer(self.stage)
        self.best: dict[str, dict[str, Any] | None] = {"image_text": None, "text_text": None}
        self.history: list[dict[str, Any]] = []
        self._shuffle = torch.Generator().manual_seed(config.seed)

    # -- loop ------------------------------------------------------------------------------
    def fit(self, on_epoch: EpochCallback | None = None) -> list[dict[str, Any]]:
        """Train up to ``epochs + text_epochs``; returns the history (one record per epoch)."""
        while self.epoch < self.total_epochs:
            stage = "image_text" if self.epoch < self.config.epochs else "text_text"
            if stage != self.stage:
                self._begin_text_stage()
            lr = self._set_lr()
            start = time.perf_counter()
            loss = self._train_image_text() if stage == "image_text" else self._train_text_text()
            metrics, score = self._validate(stage)
            best = self.best[stage]
            improved = best is None or score > best["score"]
            if improved:
                self.best[stage] = {"score": score, "epoch": self.epoch, "model": _cpu_state(self.model)}
            record = {
                "epoch": self.epoch,
                "stage": stage,
                "loss": loss,
                "lr": lr,
                "val_score": score,
                "val": metrics,
                "is_best": improved,
                "seconds": time.perf_counter() - start,
            }
            if stage == "image_text" and "rsum" in metrics:
                record["val_rsum"] = metrics["rsum"]
            self.epoch += 1
            self.history.append(record)
            if on_epoch is not None:
                on_epoch(record)
        self.restore_best()
        return self.history

    def restore_best(self) -> None:
        """Load the selected state (best text-text if trained, else best image-text)."""
        best = self.best["text_text"] or self.best["image_text"]
        if best is not None:
            self.model.load_state_dict(best["model"])

    def _begin_text_stage(self) -> None:
        if self.best["image_text"] is not None:  # MTFN-RR §4.1: S_TT starts from the best S_IT
            self.model.load_state_dict(self.best["image_text"]["model"])
        self.model.init_text_branch()
        self.stage = "text_text"
        self.optimizer = self._make_optimizer(self.stage)

    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        if stage == "text_text":
            params = self.model.text_branch_parameters()
        elif hasattr(self.model, "image_text_parameters"):
            params = self.model.image_text_parameters()
        else:
            params = list(self.model.parameters())
        return torch.optim.Adam(params, lr=self.config.lr)

    def _set_lr(self) -> float:
        cfg = self.config
        stage_epoch = self.epoch if self.stage == "image_text" else self.epoch - cfg.epochs
        steps = stage_epoch // cfg.lr_decay_epochs if cfg.lr_decay_epochs else 0
        lr = cfg.lr * cfg.lr_decay**steps  # VSE++ / MTFN-RR step decay
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _loss(self, sim: torch.Tensor, **kw: Any) -> torch.Tensor:
        stage_epoch = self.epoch if self.stage == "image_text" else self.epoch - self.config.epochs
        warm = stage_epoch < self.config.warmup_sum_epochs
        fn = hinge_max_violation if self.hinge == "max" and not warm else hinge_sum
        return fn(sim, self.margin, **kw)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()

    def _train_image_text(self) -> float:
        data, model, bs = self.train_data, self.model, self.config.batch_size
        model.train()
        perm = torch.randperm(data.n_captions, generator=self._shuffle).to(self.device)
        total, n_batches = torch.zeros((), device=self.device), 0
        for s in range(0, data.n_captions, bs):
            idx = perm[s : s + bs]  # (B,) captions
            if len(idx) < 2:
                continue
            img_idx = data.caption_image_index[idx]  # (B,)
            images, texts, lengths = data.images[img_idx], data.texts[idx], data.lengths[idx]
            img_repr = model.encode_images(images)
            txt_repr = model.encode_texts(texts, lengths)
            sim = model.similarity(img_repr, txt_repr)  # (B, B), positives on the diagonal
            same_image = img_idx[:, None] == img_idx[None, :]  # (B, B) not negatives
            loss = self._loss(sim, ignore_mask=same_image)
            loss = loss + model.extra_loss(images, texts, lengths, img_repr, txt_repr)
            self._step(loss)
            total += loss.detach()
            n_batches += 1
        return float(total) / max(n_batches, 1)

    def _text_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two different captions (a, b) of every image with >= 2 captions, images shuffled."""
        index = self.train_data.caption_image_index
        counts = torch.bincount(index, minlength=self.train_data.n_images)  # (N,)
        starts = torch.cumsum(counts, 0) - counts
        eligible = torch.nonzero(counts >= 2).squeeze(1)
        if len(eligible) < 2:
            raise InputError("text-text training needs >= 2 images with >= 2 captions each")
        order = torch.randperm(len(eligible), generator=self._shuffle).to(self.device)
        images = eligible[order]
        u = torch.rand(len(images), 2, generator=self._shuffle).to(self.device)
        c = counts[images]
        first = (u[:, 0] * c).long().clamp(max=c - 1)
        second = (first + 1 + (u[:, 1] * (c - 1)).long().clamp(max=c - 2)) % c
        return starts[images] + first, starts[images] + second

    def _train_text_text(self) -> float:
        data, model, bs = self.train_data, self.model, self.config.batch_size
        model.train()
        a_idx, b_idx = self._text_pairs()
        total, n_batches = torch.zeros((), device=self.device), 0
        for s in range(0, len(a_idx), bs):
            a, b = a_idx[s : s + bs], b_idx[s : s + bs]  # (B,) captions of B distinct images
            if len(a) < 2:
                continue
            txt_a = model.encode_texts_tt(data.texts[a], data.lengths[a])
            txt_b = model.encode_texts_tt(data.texts[b], data.lengths[b])
            sim = model.text_similarity(txt_a, txt_b)  # (B, B) S_TT, positives on the diagonal
            loss = self._loss(sim, bidirectional=False)  # MTFN-RR Eq. 7 (one direction)
            self._step(loss)
            total += loss.detach()
            n_batches += 1
        return float(total) / max(n_batches, 1)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, split: PairedSplit | PairTensors | None = None) -> dict[str, float]:
        """VSE++ R@K (i2t@k, t2i@k, medr, meanr, rsum) on ``split`` (default: the val split)."""
        from scalable_xmr.functional.retrieval import recall_at_k

        data = self.val_data if split is None else _as_tensors(split, self.model, self.device)
        if data is None:
            raise InputError("evaluate: no split given and the trainer has no val split")
        if data.captions_per_image is None:
            raise InputError("evaluate: R@K needs the same number of captions for every image")
        sim = similarity_matrix(self.model, data, self.config.eval_chunk)
        return {k: float(v) for k, v in recall_at_k(sim, data.captions_per_image).items()}

    def _validate(self, stage: str) -> tuple[dict[str, float], float]:
        if self.val_data is None:  # no selection: every epoch counts as the best so far
            return {}, float(self.epoch)
        if stage == "image_text":
            metrics = self.evaluate()
            return metrics, metrics["rsum"]
        r1 = _nearest_text_recall(self.model, self.val_data, self.config.eval_chunk)
        return {"tt_r1": r1}, r1

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimizer, epoch, stage, best, history, RNG."""
        rng = {"torch": torch.get_rng_state(), "shuffle": self._shuffle.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": "scalable_xmr.pair_trainer/1",
            "config": asdict(self.config),
            "epoch": self.epoch,
            "stage": self.stage,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best": self.best,
            "history": self.history,
            "rng": rng,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (model name must match)."""
        saved = state.get("config", {}).get("model")
        if saved != self.config.model:
            raise InputError(f"checkpoint is for model {saved!r}, trainer is {self.config.model!r}")
        self.model.load_state_dict(state["model"])
        self.stage = state["stage"]
        self.optimizer = self._make_optimizer(self.stage)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best = int(state["epoch"]), dict(state["best"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self._shuffle.set_state(state["rng"]["shuffle"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` atomically with torch.save."""
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return Path(path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Resume from a file written by :meth:`save_checkpoint` (``weights_only=True``)."""
        if not Path(path).is_file():
            raise MissingError(f"{path}: checkpoint not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file
            raise InputError(f"{path}: not a readable pair-trainer checkpoint ({e})") from e
        if not isinstance(state, dict) or state.get("format") != "scalable_xmr.pair_trainer/1":
            raise InputError(f"{path}: not a pair-trainer checkpoint")
        self.load_state_dict(state)
