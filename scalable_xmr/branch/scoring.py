"""Branch-model registry and chunked scoring of a paired split (no training, no Ray, no MLflow).

- :func:`build_branch_model`: the model registry ("vse", "mtfn", "mmca", "vsa"), each model
  module imported on first use.
- :class:`PairTensors`: a :class:`~scalable_xmr.data.paired.PairedSplit` as tensors on a device.
- :func:`encode_gallery`, :func:`similarity_matrix`, :func:`text_similarity_matrix`: chunked
  scoring of every image against every caption (and caption against caption for MTFN's S_TT);
  :func:`text_cosine_matrix`: cosine of text embeddings, the text-text similarity of models
  without an S_TT branch (MTFN-RR §3.2 re-ranking needs one; docs/metrics.md).

Everything here ranks or evaluates, so it scores with the models' ``ranking_scores`` /
``text_ranking_scores`` (MTFN: the pre-sigmoid logits, which do not saturate into float32 ties;
every other model: its ``similarity``); training losses call ``similarity`` directly.

Split out of ``branch/trainer.py`` (which re-exports every public name here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scalable_xmr.data.paired import PairedSplit
from scalable_xmr.errors import InputError
from scalable_xmr.models.base import BranchModel, Repr

__all__ = [
    "PairTensors",
    "as_pair_tensors",
    "encode_gallery",
    "nearest_text_recall",
    "similarity_matrix",
    "text_cosine_matrix",
    "text_kind",
    "text_similarity_matrix",
]


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


def as_pair_tensors(
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
    data = as_pair_tensors(data, model, device)
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
    """Ranking scores of every image against every caption, ``(N_img, N_cap)`` float32 on
    ``out_device``: ``model.ranking_scores`` (MTFN: logits of S_IT, not its sigmoid).

    Representations are encoded once; the scores run on (chunk × chunk) blocks so models
    whose score is not a dot product (MTFN, MMCA) keep bounded memory.
    """
    data = as_pair_tensors(data, model, device)
    img_repr, txt_repr = encode_gallery(model, data, chunk)
    with _EvalMode(model):
        return _blockwise(model.ranking_scores, img_repr, data.n_images, txt_repr, data.n_captions,
                          chunk, out_device)


def _blockwise(
    score: Callable[[Repr, Repr], torch.Tensor], rows: Repr, n_rows: int, cols: Repr, n_cols: int,
    chunk: int, out_device: torch.device | str,
) -> torch.Tensor:
    """``score`` of every row against every column, one (chunk × chunk) block at a time."""
    out = torch.empty(n_rows, n_cols, dtype=torch.float32, device=out_device)
    for i in range(0, n_rows, chunk):
        row_block = _rows(rows, i, i + chunk)
        for j in range(0, n_cols, chunk):
            out[i : i + chunk, j : j + chunk] = score(row_block, _rows(cols, j, j + chunk)).to(
                out_device, torch.float32)
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
    """S_TT of every caption against every caption, ``(N_cap, N_cap)`` (MTFN Eq. 6), as the
    pre-sigmoid logits ``model.text_ranking_scores`` (same order, no float32 ties)."""
    if not getattr(model, "has_text_branch", False):
        raise InputError(f"model {model.name!r} has no text-text branch (only MTFN has S_TT)")
    data = as_pair_tensors(data, model, device)
    with _EvalMode(model):
        reprs = _encode_texts_tt(model, data, chunk)
        return _blockwise(model.text_ranking_scores, reprs, data.n_captions, reprs, data.n_captions,
                          chunk, out_device)


def nearest_text_recall(model: BranchModel, data: PairTensors, chunk: int) -> float:
    """% of captions whose most S_TT-similar other caption shares its image (chunked argmax over
    ``model.text_ranking_scores``, the S_TT logits)."""
    with _EvalMode(model):
        reprs = _encode_texts_tt(model, data, chunk)
        hits = torch.zeros((), device=data.texts.device)
        for i in range(0, data.n_captions, chunk):
            block = torch.cat(
                [
                    model.text_ranking_scores(_rows(reprs, i, i + chunk), _rows(reprs, j, j + chunk))
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


def _text_embedding(repr_: Repr) -> torch.Tensor:
    """The global text vector of a representation: the tensor itself or a tuple's first element
    (MMCA's c0), flattened to ``(B, D)``."""
    first = repr_[0] if isinstance(repr_, tuple | list) else repr_
    return first.reshape(first.shape[0], -1)


def text_cosine_matrix(
    model: BranchModel,
    data: PairedSplit | PairTensors,
    chunk: int = 1024,
    device: torch.device | None = None,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Cosine similarity of every caption's text embedding with every other's, ``(N_cap, N_cap)``.

    The text-text similarity for T2I re-ranking of models without an S_TT branch (MTFN-RR §3.2;
    docs/metrics.md): VSE's GRU embedding, MMCA's c0, VSA's code h_c, MTFN's projected t̃. It reads
    only the captions, never which image a caption belongs to.
    """
    data = as_pair_tensors(data, model, device)
    with _EvalMode(model):
        parts = [
            _text_embedding(model.encode_texts(data.texts[s : s + chunk], data.lengths[s : s + chunk]))
            for s in range(0, data.n_captions, chunk)
        ]
        emb = F.normalize(torch.cat(parts).float(), dim=-1)  # (M, D)
        out = torch.empty(data.n_captions, data.n_captions, dtype=torch.float32, device=out_device)
        for i in range(0, data.n_captions, chunk):
            out[i : i + chunk] = (emb[i : i + chunk] @ emb.T).to(out_device)  # (B, M)
    return out
