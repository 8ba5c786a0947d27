"""The HTTP app: the v1 JSON API, the Open Inference Protocol v2 (KServe, Triton), Prometheus metrics, health
checks and the web page, over one :class:`~.engine.Engine`.

Every error is JSON ``{"error": ...}`` with its status: 400 undecodable image, 401 missing or wrong API key,
413 body over ``max_body_mb`` (counted while it streams, chunked uploads included), 415 wrong content type,
422 bad parameters, 503 with Retry-After (queue full or not ready), 504 past ``timeout_s``. The server never
fetches URLs: images come in the request body only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from ..errors import InputError
from ..inference import Classifier
from ..version import __version__
from . import health, v1, v2
from .config import ServeConfig
from .server import REQUEST_ID, Models, Server, error_response, log_access
from .wire import ApiError

logger = logging.getLogger("inceptionv3")

def _route_template(routes: list[BaseRoute], scope: dict) -> str:
    """The metrics label of a request: its route's template (``/v2/models/{model}/infer``), or ``unmatched``, so that
    a scan of made-up paths cannot grow the label set (one series per path would)."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", "unmatched")
        if match == Match.PARTIAL and partial is None:  # the path of a route, with another method (405)
            partial = getattr(route, "path", None)
    return partial or "unmatched"


def _lifespan(models: Models, app: FastAPI, grpc_host: str):
    """The model threads start (and warm up) with the app, and the gRPC server with them (``--grpc-port``); all
    drain when it ends."""
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        models.start()
        if models.config.ready_before_start:
            failed = await asyncio.to_thread(models.settle, 600)
            if failed is not None:
                raise RuntimeError(f"the model failed to start: {failed}")
        grpc_server = None
        if models.config.grpc_port is not None:
            from .grpc_v2 import start_grpc

            grpc_server = await start_grpc(models, models.config.grpc_port, grpc_host)
            app.state.grpc_port = grpc_server.port
        yield
        if grpc_server is not None:  # after REST has drained: its calls in flight get up to --timeout-s
            await grpc_server.stop(grace=models.config.timeout_s)
        models.stop()
    return lifespan


def _model_of(request: Request, models: Models) -> str:
    """The access log's model: the one a route picked (``request.state.model``), else the path's ``{model}`` or
    ``?model=`` once known to be served, else the default."""
    name = getattr(request.state, "model", None) or request.scope.get("path_params", {}).get("model") or \
        request.query_params.get("model")
    return name if name in models.servers else models.default.name


def _add_middleware(app: FastAPI, models: Models, routes: list[BaseRoute]) -> None:
    """Request ids, the API key, and a count and latency per route template and status."""
    served_by = f"{socket.gethostname()}:{os.getpid()}"  # which process answered (replicas behind a proxy)
    config = models.config

    @app.middleware("http")
    async def around(request: Request, call_next):
        started = time.monotonic()
        given = request.headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        endpoint = _route_template(routes, request.scope)
        key = models.client_key(request.headers.get("authorization", ""), request.url.path)
        if key is None:
            response = error_response(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                      {"WWW-Authenticate": "Bearer"})
        elif (why := models.over_limit(key)) is not None:
            response = error_response(429, why, {"Retry-After": "1"})
        else:
            models.in_flight[key] += 1
            try:
                response = await call_next(request)  # ApiError becomes its JSON answer in the handler below
            except Exception as exc:  # a bug: answered here, so that it too carries its id and is counted
                logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
                response = error_response(500, f"internal error ({type(exc).__name__}); the server's log has the "
                                          "details")
            finally:
                models.in_flight[key] -= 1
            models.metrics.latency.labels(endpoint=endpoint).observe(time.monotonic() - started)
        response.headers["X-Request-ID"] = request_id
        response.headers["X-Served-By"] = served_by
        models.metrics.requests.labels(endpoint=endpoint, code=str(response.status_code)).inc()
        if config.access_log:
            log_access(request_id, request.method, endpoint, _model_of(request, models), response.status_code, started,
                       request.client.host if request.client else None)
        return response


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": ...}``; a bug's details go to the log, never into the answer."""
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                             for e in exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server's log has the details")


def create_app(config: ServeConfig | None = None, classifier: Classifier | Mapping[str, Classifier] | None = None,
               grpc_host: str = "127.0.0.1") -> FastAPI:
    """The app: the models (one ``Server`` each) behind the health, v1 and v2 routers, and with ``--grpc-port`` the
    v2 protocol over gRPC on ``grpc_host`` (the port it got is ``app.state.grpc_port``). ``classifier``: one,
    already built, or several by their v2 names; by default each ``--model`` is loaded."""
    config = config or ServeConfig()
    if config.max_concurrency is not None and config.max_concurrency < 1:
        raise InputError(f"--max-concurrency must be at least 1, got {config.max_concurrency}")
    if config.grpc_port is not None:
        try:
            from . import grpc_v2  # noqa: F401
        except ImportError as exc:
            raise InputError(f"--grpc-port needs the grpc extra: pip install -e '.[serve,grpc]' in the clone "
                             f"({exc})") from None
    models = Models.build(config, classifier)
    app = FastAPI(title="inceptionv3", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.router.lifespan_context = _lifespan(models, app, grpc_host)
    app.state.models = models
    app.state.server = models.default
    routers = [module.router(models) for module in (health, v1, v2)]
    for router in routers:
        app.include_router(router)
    _add_middleware(app, models, [route for router in routers for route in router.routes])
    _add_error_handlers(app)
    return app


__all__ = ["Models", "ServeConfig", "Server", "create_app"]
