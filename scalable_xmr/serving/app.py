"""The Ray Serve application of ``xmr serve``: one search deployment, the FastAPI app of ``http.py``.

``xmr`` (HTTP ingress at ``/``): :class:`SearchService`, a :class:`~scalable_xmr.serving.service.
Searcher` per replica -- the run's networks, one gallery per target modality (an ``xmr index``
table, or the run's stored test split, optionally behind a faiss index) and the stored test items
queries by id name. Queries are encoded in the replica itself: concurrent requests that arrive
together are encoded in one call (``@serve.batch`` with no wait), then ranked in a worker thread
(matmul, faiss and the fusion scans release the GIL). ``--replicas`` and ``--gpus-per-replica``
scale this one deployment.

Deploying: a placeholder app answers 503 ``{"status": "deploying"}`` on every path first, then the
real app replaces it (Serve swaps replicas only once the new ones are healthy), so ``/healthz`` is
503 until the service can answer and 200 after. :func:`deploy_modality` re-deploys the app with one
more modality (e.g. one added with ``xmr add-modality``); Serve replaces replicas one at a time, so
the service keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from scalable_xmr.errors import InputError
from scalable_xmr.serving.http import build_app, placeholder_app
from scalable_xmr.serving.preflight import RunInfo, check_serve
from scalable_xmr.serving.schema import SearchAnswer, SearchRequest
from scalable_xmr.serving.service import Query, Searcher

APP = "xmr"
MAX_BATCH = 32


@serve.deployment
@serve.ingress()
class SearchService:
    """HTTP ingress: the FastAPI routes over one :class:`Searcher`."""

    def __init__(self, run_uri: str, indexes: dict[str, str], modalities: list[str], ann: str = "exact",
                 model: str | None = None, device: str = "cpu"):
        self.searcher = Searcher(run_uri, indexes, modalities, ann, model, device)

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(self.searcher.health, self.searcher.describe, self.search)

    def gallery_size(self, modality: str) -> int:
        return len(self.searcher.galleries[modality])

    async def search(self, req: SearchRequest) -> SearchAnswer:
        query = self.searcher.prepare(req)  # checks only: cheap, on the event loop
        answer = await self._answer((req, query))
        if isinstance(answer, Exception):
            raise answer
        return answer

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.0)
    async def _answer(self, items: list[tuple[SearchRequest, Query]]) -> list[SearchAnswer | InputError]:
        """The requests that arrived together: encoded per modality in one model call and ranked,
        in one worker thread (torch, matmul and faiss release the GIL; the event loop keeps taking
        requests). No wait for a batch to fill: one request alone goes at once."""
        return await asyncio.to_thread(self.searcher.answer_many, items)


@serve.deployment
@serve.ingress()
class Deploying:
    """The placeholder answering 503 while :class:`SearchService` deploys."""

    def __serve_build_asgi_app__(self) -> Any:
        return placeholder_app()


def _options(replicas: int, gpus_per_replica: float) -> dict[str, Any]:
    # A small CPU share: the replica waits on requests most of the time; a GPU replica asks for one.
    # Up to MAX_BATCH requests in flight per replica, so concurrent queries can be encoded together.
    return {"num_replicas": replicas, "ray_actor_options": {"num_cpus": 0.25, "num_gpus": gpus_per_replica},
            "max_ongoing_requests": MAX_BATCH, "logging_config": _LOGGING}


# Serve's own INFO lines (deploys, replicas, one access line per request: ~45 lines a session) are
# left out unless XMR_DEBUG=1 / --verbose; its warnings and errors still show.
_LOGGING: dict[str, Any] = {"log_level": "WARNING", "enable_access_log": False}


def set_verbose(verbose: bool) -> None:
    """Serve's INFO logs (and one access line per request) on, or off (the default)."""
    _LOGGING.update(log_level="INFO" if verbose else "WARNING", enable_access_log=verbose)
    logging.getLogger("ray.serve").setLevel(logging.INFO if verbose else logging.WARNING)


def deploy(run_uri: str, indexes: dict[str, str] | None = None, modalities: list[str] | None = None,
           host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, gpus_per_replica: float = 0.0,
           ann: str = "exact", model: str | None = None) -> str:
    """Start Serve on ``host:port``, answer 503 at once, then deploy the search app; returns the
    base URL once it is deployed. Ray must be connected; ``preflight.check_serve`` is run first."""
    run = check_serve(run_uri, dict(indexes or {}), modalities, ann, model, host, port=None)
    mods = list(modalities or run.modalities)
    set_verbose(_LOGGING["log_level"] == "INFO")  # the driver's Serve logger follows the setting
    serve.start(http_options={"host": host, "port": port}, logging_config=_LOGGING)
    serve.run(Deploying.options(ray_actor_options={"num_cpus": 0}, logging_config=_LOGGING).bind(),
              name=APP, route_prefix="/")
    _run(run, dict(indexes or {}), mods, ann, replicas, gpus_per_replica)
    return f"http://{host}:{port}"


def _run(run: RunInfo, indexes: dict[str, str], mods: list[str], ann: str, replicas: int,
         gpus_per_replica: float) -> None:
    device = "cuda" if gpus_per_replica > 0 else "cpu"
    service = SearchService.options(**_options(replicas, gpus_per_replica))
    serve.run(service.bind(run.store.uri, indexes, mods, ann, run.model, device), name=APP, route_prefix="/")
    _DEPLOYED.update(run=run, indexes=indexes, mods=mods, ann=ann, replicas=replicas, gpus=gpus_per_replica)


_DEPLOYED: dict[str, Any] = {}  # what this process deployed last (deploy_modality extends it)


def deploy_modality(run_uri: str, modality: str, index: str | None = None, replicas: int | None = None,
                    gpus_per_replica: float | None = None) -> int:
    """Serve one more modality (or reload one) -- e.g. after ``xmr add-modality`` -- by re-deploying
    the app with it; Serve swaps replicas one at a time, so queries keep being answered. Returns its
    gallery size."""
    last = _DEPLOYED or {"indexes": {}, "mods": [], "ann": "exact", "replicas": 1, "gpus": 0.0}
    indexes = {**last["indexes"], **({modality: index} if index else {})}
    mods = [*[m for m in last["mods"] if m != modality], modality]
    model = last["run"].model if last.get("run") else None
    run = check_serve(run_uri, indexes, mods, last["ann"], model, "127.0.0.1", port=None)
    _run(run, indexes, mods, last["ann"], replicas or last["replicas"],
         last["gpus"] if gpus_per_replica is None else gpus_per_replica)
    return serve.get_app_handle(APP).gallery_size.remote(modality).result()


def shutdown(private_ray: bool = False) -> None:
    """Stop serving. ``private_ray``: this process started its own local Ray (``connect``), and
    Serve goes with it -- ``serve.shutdown`` there kills the controller mid-way through its own
    graceful shutdown, which Ray reports as a failed task on the way out."""
    import ray

    if private_ray and ray.is_initialized():
        ray.shutdown()
    else:
        serve.shutdown()
