"""Search with an image-text branch model (VSE, VSA, MMCA, MTFN) of a ``pairs`` run.

Each model's way of scoring decides how a gallery is searched:

- VSE, VSA (``embedding``): the score is the cosine of two L2-normalised embeddings, so a gallery is
  one embedding matrix and search is the exact chunked top-k of ``serving.search``.
- MMCA (``rerank``): S = i0·c0 + α·i1·c1 (MMCA §3.5). The first term is a dot product of
  per-item embeddings (i0 of an image, c0 of a caption), the second needs the cross-attention
  transformer over every (image, caption) pair. Two modes, named wherever results are shown:

  * ``exact`` (the default, ``depth=None``): every gallery item is scored with the full S, as the
    paper ranks and as evaluation does; the gallery is scored in chunks of rows (memory bounded by
    ``Q x chunk`` scores and the model's ``pair_chunk`` pairs per transformer call). Cost: Q·N
    cross-attention passes over (regions + words) tokens, plus Q·N·d for i0·c0.
  * ``two-stage`` (``depth=D``): the D best items by i0·c0 (exact, chunked), then those D re-scored
    with the full S. Approximate: an item outside the first stage's D cannot enter the top k.
    Cost: Q·N·d + Q·D cross-attention passes. With D = N it ranks as ``exact`` does.

  In both modes ties in S go to the lower gallery row (the second stage re-orders its candidates
  by gallery row before the stable sort), so ``depth = N`` and ``exact`` agree even on ties.
- MTFN (``pairwise``): S_IT = sigmoid(W_m Σ_r (W_v^r ṽ) ⊙ (W_t^r t̃)) (MTFN Eq. 3-4) has no
  per-item embedding: the gallery's representations (ṽ or t̃) are scored against the queries
  in chunks with ``model.ranking_scores`` (the pre-sigmoid logit, same order). Cost per search:
  projecting the gallery, N·dim·R·d_f multiply-adds (R = rank, d_f = fusion width; MTFN's
  defaults 20 x 1024 make that ~21M per item), plus Q·N·R·d_f for the scores: for big galleries
  use an embedding model.

Nothing here uses Ray; ``serving.run.TrainedRun`` calls it for ``pairs`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from scalable_xmr.errors import InputError
from scalable_xmr.models.base import BranchModel, Repr
from scalable_xmr.serving.preflight import MODES
from scalable_xmr.serving.search import check_features, chunked_topk, exact_topk, l2_normalize


class BranchEngine:
    """Encode images / captions with one trained branch model and search between them."""

    def __init__(self, model: BranchModel, model_name: str, dims: dict[str, Any], device: torch.device,
                 chunk: int = 256):
        """``dims``: the input sizes the model was built for (``model.pt``'s ``image_shape``,
        ``vocab_size``, ``text_dim``: not every model keeps them as attributes)."""
        self.model, self.name, self.device, self.chunk = model.eval(), model_name, device, chunk
        self.image_dim = int(dims["image_shape"][-1])
        self.vocab_size, self.text_dim = int(dims["vocab_size"]), dims.get("text_dim")
        self.mode = MODES.get(model_name)
        if self.mode is None:
            raise InputError(f"model: {model_name!r} has no search support (known: {', '.join(MODES)})")

    # ---- inputs --------------------------------------------------------------------------------
    def inputs(self, modality: str, features: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checked model inputs: images (n, [R,] dim) float, or (tokens (n, T) long, lengths)."""
        if modality == "image":
            x = np.asarray(features, dtype=np.float32) if not isinstance(features, np.ndarray) else features
            dim = self.image_dim
            if x.ndim == 3 and x.shape[0] and x.shape[-1] == dim:
                flat = check_features(x.reshape(-1, dim), dim, where="image")
                return torch.from_numpy(flat.reshape(x.shape)), None
            return torch.from_numpy(check_features(x, dim, where="image")), None
        if self.text_dim is not None:
            return torch.from_numpy(check_features(features, self.text_dim, where="text")), None
        return self._tokens(features)

    def _tokens(self, features: Any) -> tuple[torch.Tensor, torch.Tensor]:
        try:  # a list of id lists, a 0-padded (n, T) int array, or an object array of arrays
            rows = [np.asarray(r).reshape(-1) for r in features]
        except TypeError:
            raise InputError(f"features (text): must be token-id lists, got {type(features).__name__}") \
                from None
        vocab = self.vocab_size
        lengths = []
        for i, r in enumerate(rows):
            r = r[r != 0] if r.ndim == 1 and np.issubdtype(r.dtype, np.integer) else r
            ok = r.ndim == 1 and len(r) and np.issubdtype(r.dtype, np.integer)
            if not ok or r.min() < 1 or r.max() >= vocab:
                raise InputError(f"features (text): row {i} must be a non-empty list of token ids in "
                                 f"1..{vocab - 1}, got {np.asarray(r).tolist()[:8]!r}")
            rows[i] = r
            lengths.append(len(r))
        if not rows:
            raise InputError("features (text): no captions given")
        tokens = np.zeros((len(rows), max(lengths)), np.int64)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        return torch.from_numpy(tokens), torch.tensor(lengths, dtype=torch.long)

    # ---- representations -----------------------------------------------------------------------
    @torch.no_grad()
    def represent(self, modality: str, features: Any) -> Repr:
        """The model's full representation of ``features`` (encoded in chunks, on the device)."""
        x, lengths = self.inputs(modality, features)
        parts = []
        for s in range(0, len(x), self.chunk):
            xb = x[s : s + self.chunk].to(self.device)
            if modality == "image":
                parts.append(self.model.encode_images(xb))
            else:
                lb = lengths[s : s + self.chunk].to(self.device) if lengths is not None else \
                    torch.ones(len(xb), dtype=torch.long, device=self.device)
                parts.append(self.model.encode_texts(xb, lb))
        if isinstance(parts[0], tuple):  # MMCA: (i0, R) / (c0, E, valid); tokens padded to one T
            return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
        return torch.cat(parts)

    def embedding(self, repr_: Repr) -> np.ndarray:
        """The per-item vector a gallery index stores: VSE/VSA embedding (L2-normalised), MMCA's
        i0 / c0 (first stage), MTFN's ṽ / t̃ (scored by fusion, not by a dot product)."""
        first = repr_[0] if isinstance(repr_, tuple) else repr_
        emb = first.float().cpu().numpy()
        return l2_normalize(emb) if self.mode == "embedding" else np.ascontiguousarray(emb)

    # ---- search --------------------------------------------------------------------------------
    def _scores(self, query_modality: str, query: Repr, gallery: Repr) -> torch.Tensor:
        """(Q, G) ranking scores, whichever side is the image."""
        if query_modality == "image":
            return self.model.ranking_scores(query, gallery)
        return self.model.ranking_scores(gallery, query).T

    def check_depth(self, depth: object, k: int, n_gallery: int, field: str = "depth") -> int | None:
        """``depth`` checked: None (exact), or an int from ``k`` to the gallery size for MMCA's
        two-stage search; anything else, or a depth for a model without two stages, is InputError."""
        if depth is None:
            return None
        if self.mode != "rerank":
            raise InputError(f"{field}: only MMCA runs have a two-stage search; a {self.name} search "
                             f"is exact (got {field}={depth!r})")
        if not isinstance(depth, int | np.integer) or isinstance(depth, bool) or \
                not k <= int(depth) <= n_gallery:
            raise InputError(f"{field}: must be an integer from k = {k} to the gallery size {n_gallery}, "
                             f"got {depth!r}")
        return int(depth)

    def describe(self, depth: int | None, n_gallery: int) -> str:
        """How a search ranks, for the user: the mode and, for MMCA / MTFN, the cost per query."""
        if self.mode == "embedding":
            return "exact (cosine of stored embeddings)"
        if self.mode == "pairwise":
            return f"exact (MTFN fusion score of every item: {n_gallery} fusion passes per query)"
        if depth is None:
            return f"exact (MMCA full S of every item: {n_gallery} cross-attention passes per query)"
        return (f"two-stage, approximate (top {depth} of {n_gallery} by i0·c0, re-scored with the full S: "
                f"{depth} cross-attention passes per query)")

    @torch.no_grad()
    def search(self, query_modality: str, query: Repr, gallery: Repr, n_gallery: int, k: int,
               depth: int | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(indices (Q, k), scores (Q, k)) of the best gallery items of each query.

        VSE/VSA: ``gallery`` may be the gallery's stored embeddings (a numpy array, already
        L2-normalised by :meth:`embedding`): used as they are, not normalised again per search.
        ``depth``: MMCA only; None ranks every item with the full S (exact), an int ranks the
        ``depth`` best by i0·c0 with the full S (two-stage; see the module docstring)."""
        depth = self.check_depth(depth, k, n_gallery)
        if self.mode == "embedding":
            emb = gallery if isinstance(gallery, np.ndarray) else self.embedding(gallery)
            return exact_topk(self.embedding(query), emb, k, chunk, self.device)
        if self.mode == "pairwise" or depth is None:
            # MTFN, and MMCA exact: the model's score of every pair, one gallery chunk at a time
            return chunked_topk(lambda a, b: self._scores(query_modality, query, _rows(gallery, a, b)),
                                n_gallery, k, min(chunk, 1024))
        # MMCA two-stage: i0·c0 candidates (exact), then the full S on those only
        first_q, first_g = query[0].float(), gallery[0].float()
        cand, _ = exact_topk(first_q, first_g, depth, chunk, self.device)
        out_idx, out_scores = [], []
        for qi, row in enumerate(np.sort(cand, axis=1)):  # gallery order: ties to the lower row
            s = self._scores(query_modality, _rows(query, qi, qi + 1), take_rows(gallery, row))[0]  # (depth,)
            order = torch.sort(s.cpu(), descending=True, stable=True).indices[:k]
            out_idx.append(row[order.numpy()])
            out_scores.append(s.cpu()[order].numpy())
        return np.stack(out_idx), np.stack(out_scores).astype(np.float32)


def _rows(repr_: Repr, start: int, end: int) -> Repr:
    return tuple(t[start:end] for t in repr_) if isinstance(repr_, tuple) else repr_[start:end]


def take_rows(repr_: Repr, index: Sequence[int]) -> Repr:
    """The rows ``index`` of a representation (a tensor, or a tuple of per-item tensors)."""
    idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
    if isinstance(repr_, tuple):
        return tuple(t[idx.to(t.device)] for t in repr_)
    return repr_[idx.to(repr_.device)]
