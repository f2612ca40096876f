"""The Ray Serve application of ``xmr serve``: encoders per modality + one search deployment.

Applications (each deployed, and redeployed, on its own):

- ``xmr-encoder-<modality>`` (no HTTP route): :class:`ModalityEncoder`, the modality's network
  with its normaliser; concurrent requests are batched with ``@serve.batch``. Replicas and GPUs
  per replica are configurable.
- ``xmr`` (HTTP ingress at ``/``): :class:`SearchService`, holding one gallery per target modality
  (an ``xmr index`` table, or the run's stored test embeddings), optionally behind a faiss index.

HTTP, JSON in and out:

- ``GET /healthz`` -> ``{"status": "ok", "modalities": [...]}``
- ``GET /modalities`` -> ``{"<modality>": {"input_dim", "gallery", "gallery_size"}}``
- ``POST /search`` ``{"query_modality", "features": [...] | "id": "...", "target_modality", "k"}``
  -> ``[{"id", "score"}, ...]`` best first. ``id`` names a stored test item of the query modality.

A bad request gets a 4xx JSON body ``{"error": "<field>: ... got <value>"}``; the service keeps
serving. :func:`deploy_modality` (re)deploys one modality's encoder and gallery -- e.g. one added
to the run with ``xmr add-modality`` -- leaving the other encoders running untouched.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from ray import serve

from scalable_xmr.errors import InputError, XMRError
from scalable_xmr.serving.ann import AnnIndex
from scalable_xmr.serving.index import check_index, read_index
from scalable_xmr.serving.run import Gallery, TrainedRun, load_run
from scalable_xmr.serving.search import check_features, check_k, exact_topk

APP = "xmr"
MAX_BATCH = 32


def encoder_app_name(modality: str) -> str:
    return f"xmr-encoder-{modality}"


@serve.deployment
class ModalityEncoder:
    """One modality's network: raw feature rows in, L2-normalised embeddings out (batched)."""

    def __init__(self, run_uri: str, modality: str, device: str = "auto"):
        self.run = load_run(run_uri, device=device)
        self.modality = self.run.check_modality(modality)
        self.run.encoder(modality)  # load the network now, not on the first request

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.005)
    async def encode(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        emb = self.run.encode(self.modality, np.stack(rows))  # (B, d): one forward pass per batch
        return list(emb)


@serve.deployment
class SearchService:
    """HTTP ingress: checks a request, has the query encoded, ranks the target's gallery."""

    def __init__(self, run_uri: str, indexes: dict[str, str], modalities: list[str], ann: str = "exact"):
        self.run_uri, self.ann = run_uri, ann
        self.run = load_run(run_uri, device="cpu")
        self.galleries: dict[str, Gallery] = {}
        self.ann_indexes: dict[str, AnnIndex] = {}
        self.sources: dict[str, str] = {}  # modality -> "index <path>" or "stored test split"
        self.stored: dict[str, dict[str, int]] = {}
        self.query_stored: dict[str, Gallery] = {}
        for m in modalities:
            self._load_gallery(self.run.check_modality(m), indexes.get(m))

    def add_modality(self, modality: str, index: str | None = None) -> int:
        """Load (or reload) one modality's gallery (and its stored test items, for queries by id);
        returns the gallery size. Its encoder is an application of its own (``deploy_modality``)."""
        run = load_run(self.run_uri, device="cpu")  # re-read: the modality may be new in the run
        modality = run.check_modality(modality)
        self.run = run
        return self._load_gallery(modality, index)

    def _load_gallery(self, modality: str, index: str | None) -> int:
        """One modality's gallery and stored test items, from ``self.run``; returns the gallery size."""
        gallery = read_index(index, self.run, modality) if index else self.run.gallery(modality, "test")
        self.galleries[modality] = gallery
        self.sources[modality] = f"index {index}" if index else "stored test split"
        if self.ann != "exact":
            self.ann_indexes[modality] = AnnIndex.build(gallery.embeddings, self.ann)
        # Queries by id name stored test items: without an index, that is the gallery just read.
        stored = self.run.gallery(modality, "test") if index else gallery
        self.query_stored[modality] = stored
        self.stored[modality] = {str(i): n for n, i in enumerate(stored.ids)}
        return len(gallery)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        path, method = request.url.path.rstrip("/") or "/", request.method
        try:
            if path == "/healthz" and method == "GET":
                return JSONResponse({"status": "ok", "modalities": sorted(self.galleries)})
            if path == "/modalities" and method == "GET":
                return JSONResponse(self.describe())
            if path == "/search" and method == "POST":
                try:
                    body = json.loads(await request.body())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise InputError(f"body: not valid JSON ({e})") from None
                return JSONResponse(await self.search(body))
            if path in ("/healthz", "/modalities", "/search"):
                return JSONResponse({"error": f"method: {method} not allowed on {path}"}, status_code=405)
            return JSONResponse({"error": f"path: no endpoint {path!r} (GET /healthz, GET /modalities, "
                                 "POST /search)"}, status_code=404)
        except XMRError as e:
            return JSONResponse({"error": " ".join(str(e).split())}, status_code=400)

    def describe(self) -> dict[str, Any]:
        return {m: {"input_dim": self.run.input_dim(m), "gallery": self.sources[m], "gallery_size": len(g)}
                for m, g in sorted(self.galleries.items())}

    async def search(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            raise InputError(f"body: must be a JSON object, got {type(body).__name__}")
        unknown = sorted(set(body) - {"query_modality", "features", "id", "target_modality", "k"})
        if unknown:
            raise InputError(f"{unknown[0]}: unknown field (fields: query_modality, features | id, "
                             "target_modality, k)")
        q_mod = self._modality(body, "query_modality")
        t_mod = self._modality(body, "target_modality")
        gallery = self.galleries[t_mod]
        k = check_k(body.get("k", 10), len(gallery))
        if ("features" in body) == ("id" in body):
            raise InputError("features: give exactly one of 'features' (a vector) and 'id' (a stored item)")
        if "id" in body:
            row = self.stored[q_mod].get(str(body["id"])) if isinstance(body["id"], str) else None
            if row is None:
                raise InputError(f"id: {body['id']!r} is not a stored {q_mod!r} test item")
            query = self.query_stored[q_mod].embeddings[row][None, :]  # (1, d)
        else:
            features = body["features"]
            if not isinstance(features, list) or any(isinstance(v, list) for v in features):
                raise InputError(f"features: must be one flat list of numbers, got {_short(features)}")
            x = check_features(features, self.run.input_dim(q_mod), where=q_mod)[0]
            handle = serve.get_app_handle(encoder_app_name(q_mod))
            query = (await handle.encode.remote(x))[None, :]
        # The scan runs in a worker thread (matmul and faiss release the GIL), so the replica's
        # event loop keeps taking requests while a big gallery is scanned.
        if t_mod in self.ann_indexes:
            idx, scores = await asyncio.to_thread(self.ann_indexes[t_mod].search, query, k)
        else:
            idx, scores = await asyncio.to_thread(exact_topk, query, gallery.embeddings, k)
        return [{"id": str(gallery.ids[i]), "score": float(s)}
                for i, s in zip(idx[0], scores[0], strict=True)]

    def _modality(self, body: dict, field: str) -> str:
        value = body.get(field)
        if value not in self.galleries:
            serving = ", ".join(sorted(self.galleries))
            raise InputError(f"{field}: unknown modality {value!r} (serving: {serving})")
        return value


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def encoder_options(replicas: int, gpus_per_replica: float) -> dict[str, Any]:
    # Small CPU share: many tiny encoders fit a 2-CPU machine; a GPU replica asks for its GPU.
    return {"num_replicas": replicas,
            "ray_actor_options": {"num_cpus": 0.25, "num_gpus": gpus_per_replica}}


def _deploy_encoder(run: TrainedRun, modality: str, replicas: int, gpus_per_replica: float) -> None:
    """(Re)deploy one modality's encoder application (no HTTP route: the search app calls it)."""
    device = "cuda" if gpus_per_replica > 0 else "cpu"
    serve.run(ModalityEncoder.options(**encoder_options(replicas, gpus_per_replica)).bind(
        run.location, modality, device), name=encoder_app_name(modality), route_prefix=None)


def deploy(run_uri: str, indexes: dict[str, str] | None = None, modalities: list[str] | None = None,
           host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, gpus_per_replica: float = 0.0,
           ann: str = "exact", model: str | None = None) -> str:
    """Start Serve on ``host:port`` and deploy every modality's encoder and the search app.

    Everything is checked before Serve starts (unfinished run, unknown modality, an index of
    another run). Returns the base URL. Ray must be connected.
    """
    run = load_run(run_uri, model=model, device="cpu")
    if run.kind != "sdml":
        raise InputError(f"--run {run_uri}: `xmr serve` serves SDML runs (one common space); a "
                         f"{run.kind!r} run is searched with the Python API")
    indexes = dict(indexes or {})
    mods = [run.check_modality(m, "--modality") for m in (modalities or run.modalities)]
    for m, path in indexes.items():
        if m not in mods:
            raise InputError(f"--index {m}={path}: modality {m!r} is not served (serving: {', '.join(mods)})")
        check_index(path, run, m)  # its rows are read by the search replica, not here
    serve.start(http_options={"host": host, "port": port})
    for m in mods:
        _deploy_encoder(run, m, replicas, gpus_per_replica)
    service = SearchService.options(ray_actor_options={"num_cpus": 0.25})
    serve.run(service.bind(run.location, indexes, mods, ann), name=APP, route_prefix="/")
    return f"http://{host}:{port}"


def deploy_modality(run_uri: str, modality: str, index: str | None = None, replicas: int = 1,
                    gpus_per_replica: float = 0.0) -> int:
    """(Re)deploy one modality -- its encoder application and its gallery in the search app --
    without touching the other encoders (e.g. after ``xmr add-modality``). Returns the gallery size."""
    run = load_run(run_uri, device="cpu")
    modality = run.check_modality(modality, "modality")
    if index:
        check_index(index, run, modality)  # its rows are read by the search replica, not here
    _deploy_encoder(run, modality, replicas, gpus_per_replica)
    return serve.get_app_handle(APP).add_modality.remote(modality, index).result()


def shutdown() -> None:
    serve.shutdown()
