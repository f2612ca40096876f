"""The HTTP routes of ``xmr serve`` as a FastAPI app, usable in-process (tests) and under Ray Serve.

Routes (JSON in and out; schema in ``serving.schema``):

- ``GET /healthz`` -> ``{"status": "ok", "modalities": [...]}``; 503 ``{"status": "deploying"}``
  from the placeholder app that answers while the real one deploys (``app.py``);
- ``GET /modalities`` -> ``{"<modality>": {"accepts", "gallery", "gallery_size", "searches"}}``;
- ``POST /search`` -> ``{"hits": [{"id", "score"}, ...], "mode", "gallery"}`` best first.

Every failure is a 4xx JSON body ``{"error": "<field>: ..."}``: 400 for a body the schema or the
run refuses (the first problem, naming its field), 404 / 405 for an unknown path or method, 413 for
a body over :data:`MAX_BODY` bytes. :func:`build_app` takes the searcher's ``prepare`` / ``encode``
/ ``rank`` steps as async callables, so the Serve replica can batch encoding and run the scan in a
worker thread while tests call them directly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from scalable_xmr.errors import XMRError
from scalable_xmr.serving.schema import SearchAnswer, SearchRequest

MAX_BODY = 64 << 20  # 64 MiB: a 1M-number feature vector as JSON is ~20 MB


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """The first schema error as one line: ``<field>: <message> (got <value>)``."""
    if not errors:
        return "body: invalid"
    e = errors[0]
    # The location without union-member tags ("list[float]"): "features.0", not "features.list[float].0".
    loc = [str(p) for p in e.get("loc", ()) if p != "body" and not (isinstance(p, str) and "[" in p)]
    field = ".".join(loc) or "body"
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    if e.get("type") == "extra_forbidden":
        msg = ("unknown field (fields: query_modality, target_modality, k, features | id | text | tokens, "
               "depth)")
    got = e.get("input")
    shown = "" if e.get("type") in ("missing", "extra_forbidden") or loc == [] else f" (got {_short(got)})"
    return f"{field}: {msg}{shown}"


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build_app(health: Callable[[], dict[str, Any]], describe: Callable[[], dict[str, Any]],
              search: Callable[[SearchRequest], Awaitable[SearchAnswer]]) -> FastAPI:
    """The routes over a searcher: ``health()``, ``describe()`` and ``await search(request)``."""
    app = FastAPI(title="scalable_xmr search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return health()

    @app.get("/modalities")
    async def modalities() -> dict[str, Any]:
        return {m: info.model_dump() if hasattr(info, "model_dump") else info
                for m, info in describe().items()}

    @app.post("/search")
    async def search_route(request: Request) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return error(413, f"body: {len(raw)} bytes, at most {MAX_BODY}")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, f"body: not valid JSON ({e})")
        except RecursionError:
            return error(400, "body: JSON nested too deeply")
        if not isinstance(body, dict):
            return error(400, f"body: must be a JSON object, got {type(body).__name__}")
        try:
            req = SearchRequest.model_validate(body)
        except ValidationError as e:
            return error(400, describe_validation(e.errors(include_url=False)))
        answer = await search(req)
        return JSONResponse(answer.model_dump())

    @app.exception_handler(XMRError)
    async def _xmr_error(_: Request, exc: XMRError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 404:
            return error(404, f"path: no endpoint {path!r} (GET /healthz, GET /modalities, POST /search)")
        if exc.status_code == 405:
            return error(405, f"method: {request.method} not allowed on {path}")
        return error(exc.status_code, str(exc.detail))

    return app


def searcher_app(searcher: Any) -> FastAPI:
    """The routes over a :class:`~scalable_xmr.serving.service.Searcher` in this process (no Ray):
    what tests drive with a TestClient, and a way to embed the service in another ASGI server."""
    async def search(req: SearchRequest) -> SearchAnswer:
        return searcher.search(req)

    return build_app(searcher.health, searcher.describe, search)


def placeholder_app() -> FastAPI:
    """What answers while the real app deploys: 503 ``{"status": "deploying"}`` on every path."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    async def deploying(path: str) -> JSONResponse:
        return JSONResponse({"status": "deploying", "error": "service: starting, try again shortly"},
                            status_code=503, headers={"Retry-After": "2"})

    return app
