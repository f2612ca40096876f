"""A finished run, ready to use: ``load_run(uri)`` -> :class:`TrainedRun` (encode, embeddings, search).

An SDML run's modalities share one common space fixed by P (SDML §3.1), so any modality's
embedding searches any other's: one index per modality serves every query modality, including
modalities added to the run later. Each modality's network is rebuilt from its ``model.pt``
(weights, config and the input normaliser fitted on its train split, held in the model's buffers),
and :meth:`TrainedRun.encode` applies normaliser + encoder exactly as training and evaluation did
(``SDMLAutoencoder.encode``). A ``pairs`` run (image-text branch models) is searched with one of its
members (``serving.branch``): modalities ``image`` and ``text``.

Runs on object storage (``s3://``, ``gs://``...) are read through the run store's local mirror of
the bucket (``store.remote``); ``file://`` URIs are local paths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scalable_xmr.branch.model_file import model_from_payload, read_model_file
from scalable_xmr.data.paired import open_paired_dataset
from scalable_xmr.errors import InputError, MissingError
from scalable_xmr.models.runtime import resolve_device
from scalable_xmr.models.sdml import SDMLAutoencoder
from scalable_xmr.serving.branch import BranchEngine, take_rows
from scalable_xmr.serving.preflight import PAIR_MODALITIES, choose_member
from scalable_xmr.serving.search import (
    DEFAULT_CHUNK,
    SearchResult,
    check_features,
    check_k,
    exact_topk,
    result_from,
)
from scalable_xmr.store import torchfile
from scalable_xmr.store.meta import RunMeta
from scalable_xmr.store.run_store import RunStore


@dataclass(frozen=True)
class Gallery:
    """What a search ranks: ids and, per item, the run's embedding (and labels when known)."""

    modality: str
    ids: np.ndarray  # (N,) object (str)
    embeddings: np.ndarray  # (N, d) float32 (may be a memory map)
    labels: np.ndarray | None = None  # (N, n_classes) multi-hot, when known
    reprs: Any = None  # branch runs: the model's full representation (MMCA re-scoring, MTFN)

    def __len__(self) -> int:
        return len(self.ids)


class TrainedRun:
    """A finished run's networks and stored embeddings. Build it with :func:`load_run`."""

    def __init__(self, store: RunStore, meta: RunMeta, uri: str, model: str | None, device: str):
        self.store, self.meta, self.uri = store, meta, uri
        self.kind = meta.kind
        self.device = resolve_device(device)
        self._encoders: dict[str, SDMLAutoencoder] = {}
        # Stored galleries a search ranks or looks query ids up in: a branch run encodes the whole
        # split to build one, so it is built once per (modality, split), not on every search.
        self._galleries: dict[tuple[str, str], Gallery] = {}
        if self.kind == "sdml":
            self.modalities = meta.finished_modalities()
            self.model = None
            self.fingerprint = str(meta.projection["sha256"])  # P's sha256: what a common space is
            self.embedding_dim = int(meta.projection["dim"])
            self.n_classes = int(meta.dataset["n_classes"])
        else:
            members = [m for m, v in (meta.members or {}).items() if v.get("status") == "finished"]
            self.model = choose_member(members, model, store.root)
            path = store.member_dir(self.model) / "model.pt"
            payload = read_model_file(path)  # the network and the input sizes it was built for
            branch, _ = model_from_payload(payload, self.device)
            self.engine = BranchEngine(branch, payload["model"], payload, self.device)
            self.modalities = list(PAIR_MODALITIES)
            self.fingerprint = torchfile.payload_sha256(path)  # the member's model.pt content
            self.embedding_dim = None
            self.n_classes = 0

    @property
    def location(self) -> str:
        """Where a Ray worker on any node finds the run: the object-storage URI it came from, else
        the absolute local directory."""
        return str(self.store.uri)

    def __repr__(self) -> str:
        return f"TrainedRun({self.uri!r}, kind={self.kind!r}, modalities={self.modalities})"

    # ---- checks --------------------------------------------------------------------------------
    def check_modality(self, modality: object, field: str = "modality") -> str:
        if modality not in self.modalities:
            raise InputError(f"{field}: unknown modality {modality!r} (run {self.uri} has: "
                             f"{', '.join(self.modalities)})")
        return str(modality)

    def input_dim(self, modality: str) -> int:
        """Feature width the modality's network takes (SDML; image/dense text of branch models)."""
        self.check_modality(modality)
        if self.kind == "sdml":
            return self.encoder(modality).input_dim
        return int(self.engine.image_dim if modality == "image" else (self.engine.text_dim or 0))

    # ---- encoding ------------------------------------------------------------------------------
    def encoder(self, modality: str) -> SDMLAutoencoder:
        """The modality's autoencoder with its stored normaliser, in eval mode on the device."""
        self.check_modality(modality)
        if modality not in self._encoders:
            payload = self.store.load_model(modality)
            if payload.get("projection_sha256") not in ("", None, self.fingerprint):
                raise InputError(f"{self.store.model_path(modality)}: trained against P "
                                 f"{payload['projection_sha256'][:12]}, the run's P is "
                                 f"{self.fingerprint[:12]}")
            model = SDMLAutoencoder(**payload["model_config"])
            model.load_state_dict(payload["state_dict"])
            self._encoders[modality] = model.to(self.device).eval()
        return self._encoders[modality]

    def encode(self, modality: str, features: Any, batch_size: int = 4096) -> np.ndarray:
        """L2-normalised float32 embeddings ``(n, d)`` of raw ``features`` (normaliser + encoder).

        SDML: ``features`` is ``(n, input_dim)`` (or one vector). Branch runs: images ``(n, dim)`` /
        ``(n, regions, dim)``, captions as token-id lists (or dense vectors); the result is the
        model's per-item embedding (MMCA: i0 / c0; MTFN: ṽ / t̃, not normalised, see
        ``serving.branch``).
        """
        self.check_modality(modality)
        if self.kind != "sdml":
            return self.engine.embedding(self.engine.represent(modality, features))
        model = self.encoder(modality)
        x = check_features(features, model.input_dim, where=modality)
        with torch.no_grad():
            out = model.encode(torch.from_numpy(x).to(self.device), batch_size=batch_size)  # (n, d)
        return out.float().cpu().numpy()

    # ---- stored embeddings ---------------------------------------------------------------------
    def embeddings(self, modality: str,
                   split: str = "test") -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(ids, labels (n, n_classes) multi-hot or None, embeddings (n, d)) of a stored split.

        SDML: the run store's ``embeddings/<split>.parquet`` (val, test). Branch runs: the paired
        dataset's split encoded now (ids: image_id / caption_id; no class labels).
        """
        g = self.gallery(modality, split)
        return g.ids, g.labels, g.embeddings

    def gallery(self, modality: str, split: str = "test") -> Gallery:
        self.check_modality(modality)
        if self.kind == "sdml":
            path = self.store.embeddings_path(modality, split)
            if not path.is_file():
                raise MissingError(f"{path}: no stored {split!r} embeddings for {modality!r} "
                                   "(stored: val, test)")
            ids, labels, emb = self.store.read_embeddings(modality, split, self.n_classes)
            return Gallery(modality, ids, emb, labels)
        ds = open_paired_dataset(self.meta.dataset["uri"])
        if split not in ds.splits():
            raise InputError(f"split: {split!r} not in {self.meta.dataset['uri']} (has {ds.splits()})")
        data = ds.read_split(split)
        if modality == "image":
            ids, feats = data.image_ids, data.images
        else:
            ids = data.caption_ids
            feats = data.text_features if self.engine.text_dim is not None else \
                [t[:n] for t, n in zip(data.tokens, data.lengths, strict=True)]
        reprs = self.engine.represent(modality, feats)
        return Gallery(modality, np.asarray(ids, dtype=object), self.engine.embedding(reprs), None, reprs)

    def gallery_from_features(self, modality: str, ids: Sequence[str], features: Any) -> Gallery:
        """A gallery of new items (their features encoded now)."""
        self.check_modality(modality)
        if self.kind == "sdml":
            return Gallery(modality, np.asarray(list(ids), dtype=object), self.encode(modality, features))
        reprs = self.engine.represent(modality, features)
        ids = np.asarray(list(ids), dtype=object)
        return Gallery(modality, ids, self.engine.embedding(reprs), None, reprs)

    # ---- search --------------------------------------------------------------------------------
    def search(self, query_modality: str, features_or_ids: Any, target_modality: str, k: int = 10,
               gallery: Gallery | None = None, split: str = "test",
               chunk: int = DEFAULT_CHUNK, depth: int | None = None) -> SearchResult:
        """The ``k`` best items of ``target_modality`` for each query, best first.

        ``features_or_ids``: raw features of the query modality, or ids (strings) of stored items
        of the query modality's ``split``. ``gallery``: what to rank (default: the target
        modality's stored ``split``). Scores: cosine (SDML, VSE, VSA), MMCA's S, MTFN's logit.
        Every model ranks the whole gallery exactly, except an MMCA run given ``depth``: then
        the ``depth`` best by i0·c0 are re-scored with the full S (two-stage, approximate).
        ``SearchResult.mode`` says which ranking ran.
        """
        self.check_modality(query_modality, "query_modality")
        self.check_modality(target_modality, "target_modality")
        if self.kind != "sdml" and query_modality == target_modality:
            raise InputError(f"target_modality: a {self.model} run searches image<->text, got "
                             f"{query_modality!r} -> {target_modality!r}")
        gallery = gallery if gallery is not None else self._stored(target_modality, split)
        if gallery.modality != target_modality:
            raise InputError(f"gallery: holds {gallery.modality!r} items, target_modality is "
                             f"{target_modality!r}")
        k = check_k(k, len(gallery))
        if self.kind == "sdml":
            if depth is not None:
                raise InputError(f"depth: only MMCA runs have a two-stage search; an SDML search is "
                                 f"exact (got depth={depth!r})")
            query_ids, query = self._queries(query_modality, features_or_ids, split)
            idx, scores = exact_topk(query, gallery.embeddings, k, chunk, self.device)
            return result_from(query_ids, gallery.ids, idx, scores, "exact (cosine of stored embeddings)")
        depth = self.engine.check_depth(depth, k, len(gallery))
        if gallery.reprs is None and self.engine.mode != "embedding":
            raise InputError(f"gallery: a {self.model} search needs the items' features (its score "
                             "is not a dot product of stored embeddings); use gallery_from_features")
        query_ids, query = self._queries(query_modality, features_or_ids, split)
        # VSE/VSA rank by the cosine of the stored embeddings, already L2-normalised: no need
        # to re-derive them from the representations on every search.
        reprs = gallery.embeddings if self.engine.mode == "embedding" else gallery.reprs
        idx, scores = self.engine.search(query_modality, query, reprs, len(gallery), k, depth, chunk)
        return result_from(query_ids, gallery.ids, idx, scores, self.engine.describe(depth, len(gallery)))

    def _queries(self, modality: str, features_or_ids: Any, split: str) -> tuple[list[str], Any]:
        """(query ids, query embeddings or branch representations) of features or stored ids."""
        if _is_ids(features_or_ids):
            wanted = [features_or_ids] if isinstance(features_or_ids, str) else list(features_or_ids)
            stored = self._stored(modality, split)
            row = {str(i): n for n, i in enumerate(stored.ids)}
            missing = [i for i in wanted if str(i) not in row]
            if missing:
                raise InputError(f"id: {missing[0]!r} is not a stored {modality!r} item of split {split!r}")
            rows = [row[str(i)] for i in wanted]
            if self.kind == "sdml":
                return [str(i) for i in wanted], stored.embeddings[rows]
            from_reprs = stored.reprs if stored.reprs is not None else torch.as_tensor(stored.embeddings)
            return [str(i) for i in wanted], take_rows(from_reprs, rows)
        if self.kind == "sdml":
            emb = self.encode(modality, features_or_ids)
            return [""] * len(emb), emb
        reprs = self.engine.represent(modality, features_or_ids)
        n = len(reprs[0]) if isinstance(reprs, tuple) else len(reprs)
        return [""] * n, reprs

    def _stored(self, modality: str, split: str) -> Gallery:
        """:meth:`gallery`, built once per (modality, split) for searches."""
        if (modality, split) not in self._galleries:
            self._galleries[(modality, split)] = self.gallery(modality, split)
        return self._galleries[(modality, split)]


def _is_ids(x: Any) -> bool:
    if isinstance(x, str):
        return True
    return isinstance(x, list | tuple | np.ndarray) and len(x) > 0 and all(isinstance(i, str) for i in x)


def load_run(uri: str | os.PathLike, model: str | None = None, device: str = "auto") -> TrainedRun:
    """Open a finished run (a directory or a ``pyarrow.fs`` URI) for encoding and search.

    ``model`` picks the member of a ``pairs`` run that has several (``vse``, ``mtfn-seed1``...).
    A run whose run.json is not ``finished`` is refused (RunStateError naming it).
    """
    store = RunStore(os.fspath(uri))  # an object-storage URI is read through its local mirror
    meta = store.read_finished()
    if meta.kind == "sdml" and model is not None and model not in meta.finished_modalities():
        raise InputError(f"model: an SDML run has one network per modality; got {model!r}")
    return TrainedRun(store, meta, os.fspath(uri), model if meta.kind != "sdml" else None, device)
