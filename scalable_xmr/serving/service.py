"""What ``xmr serve`` answers, without Ray or HTTP: :class:`Searcher` holds one run's galleries.

A :class:`Searcher` is built once per Serve replica (``app.py``) and, in tests, in-process
(``http.build_app``). A search is three steps, split so the Serve replica can batch the middle one
across concurrent requests:

1. :meth:`Searcher.prepare`: a checked :class:`~scalable_xmr.serving.schema.SearchRequest` against
   the run -- modalities, direction, k, depth, the query's width, id, words or token ids -- into a
   :class:`Query` (a stored item's representation, or the input rows still to encode);
2. :meth:`Searcher.encode`: the inputs of several queries of one modality encoded in one call;
3. :meth:`Searcher.rank`: the gallery ranked for one query (exact, faiss, or MMCA's two stages).

Every model kind is served: SDML (any modality -> any other, through the common space), VSE, VSA,
MMCA and MTFN (image <-> text). Each failure is an InputError naming the request field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scalable_xmr.data.paired import UNK, open_paired_dataset
from scalable_xmr.data.paired.sources import tokenize
from scalable_xmr.errors import InputError
from scalable_xmr.serving.ann import AnnIndex, ann_mode
from scalable_xmr.serving.branch import take_rows
from scalable_xmr.serving.index import read_index
from scalable_xmr.serving.run import Gallery, TrainedRun, load_run
from scalable_xmr.serving.schema import Hit, ModalityInfo, SearchAnswer, SearchRequest
from scalable_xmr.serving.search import check_features, check_k, exact_topk


@dataclass
class Query:
    """One checked query: its modality and either its representation or the input to encode."""

    modality: str
    inputs: Any = None  # one item's model input, still to encode (a (dim,) row, regions, token ids)
    encoded: Any = None  # SDML: a (1, d) embedding; branch runs: the model's representation


class Searcher:
    """One run's galleries (per target modality) and stored query items, ready to search."""

    def __init__(self, run_uri: str, indexes: dict[str, str] | None = None,
                 modalities: list[str] | None = None, ann: str = "exact", model: str | None = None,
                 device: str = "cpu"):
        self.run_uri, self.ann, self.model, self.device = run_uri, ann, model, device
        self.run: TrainedRun = load_run(run_uri, model=model, device=device)
        self.galleries: dict[str, Gallery] = {}
        self.sources: dict[str, str] = {}  # modality -> "index <path>" or "stored test split"
        self.ann_indexes: dict[str, AnnIndex] = {}
        self.stored: dict[str, Gallery] = {}  # stored test items, for queries by id
        self.stored_rows: dict[str, dict[str, int]] = {}
        self.vocab: dict[str, int] | None = None
        if self.run.kind != "sdml" and self.run.engine.text_dim is None:
            words = open_paired_dataset(self.run.meta.dataset["uri"]).vocab or []
            self.vocab = {w: i for i, w in enumerate(words)}
        indexes = dict(indexes or {})
        for m in modalities or self.run.modalities:
            self.load_modality(self.run.check_modality(m, "modality"), indexes.get(m))

    # ---- galleries -------------------------------------------------------------------------------
    def load_modality(self, modality: str, index: str | None = None) -> int:
        """Load (or reload) one modality's gallery and stored test items; returns the gallery size."""
        if modality not in self.run.modalities:  # added to the run after this searcher was built
            self.run = load_run(self.run_uri, model=self.model, device=self.device)
        modality = self.run.check_modality(modality, "modality")
        gallery = read_index(index, self.run, modality) if index else self.run.gallery(modality, "test")
        self.galleries[modality] = gallery
        self.sources[modality] = f"index {index}" if index else "stored test split"
        if self.ann != "exact":
            self.ann_indexes[modality] = AnnIndex.build(gallery.embeddings, self.ann)
        stored = gallery if index is None else self.run.gallery(modality, "test")
        self.stored[modality] = stored
        self.stored_rows[modality] = {str(i): n for n, i in enumerate(stored.ids)}
        return len(gallery)

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: up, and the modalities it serves."""
        return {"status": "ok", "modalities": sorted(self.galleries)}

    def targets(self, modality: str) -> list[str]:
        """The served modalities a query of ``modality`` can rank (branch runs: the other one)."""
        if self.run.kind == "sdml":
            return sorted(self.galleries)
        return [m for m in sorted(self.galleries) if m != modality]

    def describe(self) -> dict[str, ModalityInfo]:
        """``GET /modalities``: per served modality, what a query may be and what its gallery is."""
        return {m: ModalityInfo(accepts=self._accepts(m), gallery=self.sources[m], gallery_size=len(g),
                                searches=self.targets(m))
                for m, g in sorted(self.galleries.items())}

    def _accepts(self, modality: str) -> dict[str, str]:
        out = {"id": f"a stored {modality!r} test item id"}
        if self.vocab is not None and modality == "text":
            out["text"] = f"a caption (tokenized as the dataset was; {len(self.vocab)} words, others <unk>)"
            out["tokens"] = f"token ids in 1..{len(self.vocab) - 1}"
        else:
            dim = self.run.input_dim(modality)
            out["features"] = f"{dim} numbers" + (" (or a list of region vectors of that width)"
                                                   if self.run.kind != "sdml" and modality == "image" else "")
        return out

    # ---- 1. checking a request -------------------------------------------------------------------
    def prepare(self, req: SearchRequest) -> Query:
        """The request checked against the run, as a :class:`Query` (InputError naming the field)."""
        q_mod = self._served(req.query_modality, "query_modality")
        t_mod = self._served(req.target_modality, "target_modality")
        if t_mod not in self.targets(q_mod):
            raise InputError(f"target_modality: a {self.run.model} run searches image<->text, got "
                             f"{q_mod!r} -> {t_mod!r}")
        n_gallery = len(self.galleries[t_mod])
        check_k(req.k, n_gallery)
        if self.run.kind != "sdml":
            self.run.engine.check_depth(req.depth, req.k, n_gallery)
        elif req.depth is not None:
            raise InputError(f"depth: only MMCA runs have a two-stage search; an SDML search is exact "
                             f"(got depth={req.depth!r})")
        field = req.query_field
        if field == "id":
            return Query(q_mod, encoded=self._stored_item(q_mod, req.id))
        if field in ("text", "tokens"):
            if self.vocab is None or q_mod != "text":
                raise InputError(f"{field}: {q_mod!r} queries of this run take "
                                 f"{' or '.join(self._accepts(q_mod))}, not {field}")
            ids = self._tokens(req.text) if field == "text" else self._check_tokens(req.tokens)
            return Query(q_mod, inputs=np.asarray(ids, np.int64))
        if "features" not in self._accepts(q_mod):
            raise InputError(f"features: {q_mod!r} queries of this run are captions: give text or tokens")
        dim = self.run.input_dim(q_mod)
        x = np.asarray(req.features, dtype=np.float64)
        if x.ndim == 2 and (self.run.kind == "sdml" or q_mod != "image"):
            raise InputError(f"features: one flat list of {dim} numbers for {q_mod!r}, got a list of lists")
        rows = check_features(x.reshape(-1, x.shape[-1]), dim, where=q_mod)  # finite float32
        return Query(q_mod, inputs=rows if x.ndim == 2 else rows[0])

    def _served(self, modality: str, field: str) -> str:
        if modality not in self.galleries:
            serving = ", ".join(sorted(self.galleries))
            raise InputError(f"{field}: unknown modality {modality!r} (serving: {serving})")
        return modality

    def _stored_item(self, modality: str, item: str) -> Any:
        row = self.stored_rows[modality].get(item)
        if row is None:
            other = [m for m in self.stored_rows if m != modality and item in self.stored_rows[m]]
            hint = f" (it is a stored {other[0]!r} item)" if other else ""
            raise InputError(f"id: {item!r} is not a stored {modality!r} test item{hint}")
        stored = self.stored[modality]
        if self.run.kind == "sdml" or self.run.engine.mode == "embedding":
            return stored.embeddings[row][None, :]  # (1, d)
        return take_rows(stored.reprs, [row])

    def _tokens(self, text: str) -> list[int]:
        words = tokenize(text)
        if not words:
            raise InputError("text: the caption has no words")
        unk = self.vocab[UNK]
        ids = [self.vocab.get(w, unk) for w in words]
        if all(i == unk for i in ids):
            raise InputError(f"text: no word of {text[:60]!r} is in the run's vocabulary "
                             f"({len(self.vocab)} words)")
        return ids

    def _check_tokens(self, tokens: list[int]) -> list[int]:
        bad = [t for t in tokens if not 1 <= t < len(self.vocab)]
        if bad:
            raise InputError(f"tokens: ids must be in 1..{len(self.vocab) - 1} (the run's vocabulary), "
                             f"got {bad[0]}")
        return tokens

    # ---- 2. encoding -----------------------------------------------------------------------------
    def encode(self, modality: str, inputs: list[Any]) -> list[Any]:
        """The representations of several queries' inputs of one modality, in one model call."""
        if self.run.kind == "sdml":
            emb = self.run.encode(modality, np.stack(inputs))  # (B, d)
            rows = [emb[i : i + 1] for i in range(len(inputs))]
        else:
            engine = self.run.engine
            if modality == "text" and self.vocab is not None:
                reprs = engine.represent(modality, [np.asarray(t) for t in inputs])
            else:
                reprs = engine.represent(modality, np.stack(inputs))
            rows = [take_rows(reprs, [i]) for i in range(len(inputs))]
            if engine.mode == "embedding":
                rows = [engine.embedding(r) for r in rows]
        for r in rows:
            if not all(_finite(t) for t in (r if isinstance(r, tuple) else (r,))):
                raise InputError(f"features: the {modality!r} encoding of the query is not finite "
                                 "(features too large for the network)")
        return rows

    def encoded(self, query: Query) -> Query:
        """``query`` with its representation (encoded now when it came as input)."""
        if query.encoded is None:
            query.encoded = self.encode(query.modality, [query.inputs])[0]
        return query

    # ---- 3. ranking ------------------------------------------------------------------------------
    def rank(self, req: SearchRequest, query: Query) -> SearchAnswer:
        """The gallery of ``req.target_modality`` ranked for one encoded query."""
        t_mod = req.target_modality
        gallery = self.galleries[t_mod]
        if self.run.kind == "sdml" or self.run.engine.mode == "embedding":
            if t_mod in self.ann_indexes:
                idx, scores = self.ann_indexes[t_mod].search(query.encoded, req.k)
                mode = ann_mode(self.ann)
            else:
                idx, scores = exact_topk(query.encoded, gallery.embeddings, req.k)
                mode = "exact (cosine of stored embeddings)"
        else:
            engine = self.run.engine
            idx, scores = engine.search(query.modality, query.encoded, gallery.reprs, len(gallery), req.k,
                                        req.depth)
            mode = engine.describe(req.depth, len(gallery))
        hits = [Hit(id=str(gallery.ids[i]), score=float(s)) for i, s in zip(idx[0], scores[0], strict=True)]
        return SearchAnswer(hits=hits, mode=mode, gallery=f"{t_mod} {self.sources[t_mod]}")

    def search(self, req: SearchRequest) -> SearchAnswer:
        """All three steps for one request (in-process use and tests)."""
        return self.rank(req, self.encoded(self.prepare(req)))

    def answer_many(self, items: list[tuple[SearchRequest, Query]]) -> list[SearchAnswer | InputError]:
        """Prepared queries answered together: those still to encode, one model call per modality
        (one at a time when a batch fails, so one bad query fails alone); each result an answer or
        the InputError of its own request."""
        out: list[SearchAnswer | InputError | None] = [None] * len(items)
        for modality in {q.modality for _, q in items if q.encoded is None}:
            rows = [i for i, (_, q) in enumerate(items) if q.encoded is None and q.modality == modality]
            try:
                for i, encoded in zip(rows, self.encode(modality, [items[i][1].inputs for i in rows]),
                                      strict=True):
                    items[i][1].encoded = encoded
            except InputError:
                for i in rows:
                    try:
                        items[i][1].encoded = self.encode(modality, [items[i][1].inputs])[0]
                    except InputError as e:
                        out[i] = e
        for i, (req, query) in enumerate(items):
            if out[i] is None:
                try:
                    out[i] = self.rank(req, query)
                except InputError as e:
                    out[i] = e
        return out  # type: ignore[return-value]


def _finite(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all()) if x.is_floating_point() else True
    return bool(np.isfinite(x).all())
