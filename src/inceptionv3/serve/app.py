"""The HTTP app: the v1 JSON API, the Open Inference Protocol v2 (KServe, Triton), Prometheus metrics, health
checks and the web page, over one :class:`~.engine.Engine`.

Every error is JSON ``{"error": ...}`` with its status: 400 undecodable image, 401 missing or wrong API key,
413 body over ``max_body_mb`` (counted while it streams, chunked uploads included), 415 wrong content type,
422 bad parameters, 503 with Retry-After (queue full or not ready), 504 past ``timeout_s``. The server never
fetches URLs: images come in the request body only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import logging
import os
import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..decode import ImageLoadError
from ..errors import InputError
from ..explain import METHODS, jet, resolve_target
from ..inference import Classifier, Prediction
from ..version import __version__
from ..weights import resolve_model
from .config import ServeConfig
from .engine import Engine, Job, Observer, QueueFullError
from .metrics import Metrics
from .wire import ApiError, Upload, json_uploads, short

logger = logging.getLogger("inceptionv3")

DEFAULT_TOPK = 5

#: Decoded photos that may wait for explanations at once: a 40-megapixel photo is 120 MB, and each explanation
#: holds its whole photo until the model thread reaches it.
MAX_EXPLAIN_QUEUE_BYTES = 512 * 1024**2

MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Server:
    """The state behind the routes: the classifier, the engine, the decode pool and the metrics."""

    def __init__(self, config: ServeConfig, classifier: Classifier | None = None) -> None:
        self.config = config
        if classifier is None:
            classifier = Classifier(config.model, config.weights or True, device=config.device, backend=config.backend,
                                    precision=config.precision, expected_images=10_000, decode=config.decode)
        self.classifier = classifier
        self.metrics = Metrics()
        observer = Observer(queue_wait=self.metrics.queue_wait.observe, inference=self.metrics.inference.observe,
                            batch_size=self.metrics.batch_size.observe)
        self.engine = Engine(classifier, max_batch=config.max_batch, max_delay_ms=config.max_delay_ms,
                             queue_size=config.queue_size, observer=observer)
        self.pool = ThreadPoolExecutor(max_workers=max(1, config.decode_workers),
                                       thread_name_prefix="inceptionv3-decode")
        self.max_body = int(config.max_body_mb * 1024 * 1024)
        self.decoding = 0  # images in the decode pool or waiting for it (changed on the event loop only)
        self.explain_bytes = 0  # decoded photos queued for explanation (changed on the event loop only)
        info = getattr(classifier.model, "weights_info", None)
        self.model_label = str((info.name or info.path) if info else resolve_model(config.model, config.weights).label)
        self.metrics.model_info.labels(model=self.model_label, preset=classifier.preprocess.name,
                                       backend=classifier.backend, precision=classifier.precision,
                                       device=str(classifier.device)).set(1)

    # -- reading requests ----------------------------------------------------------------------------------------

    async def body(self, request: Request) -> bytes:
        """The whole body, refused with 413 as soon as it passes the limit (declared or streamed), and with 408
        when it has not all arrived within ``timeout_s``: a stalled client must not hold its buffers for ever."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._discard(request, int(declared))
            raise ApiError(413, f"request body of {int(declared):,} bytes is over the limit of {self.max_body:,} "
                           f"bytes (--max-body-mb {self.config.max_body_mb:g})", {"Connection": "close"})
        chunks, size = [], 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise ApiError(413, f"request body is over the limit of {self.max_body:,} bytes "
                                   f"(--max-body-mb {self.config.max_body_mb:g})")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.config.timeout_s)
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within --timeout-s {self.config.timeout_s:g} "
                           f"({size:,} bytes came)", {"Connection": "close"}) from None
        data = b"".join(chunks)
        request._body = data  # so that request.form() parses these bytes instead of reading the stream again
        return data

    async def _discard(self, request: Request, declared: int) -> None:
        """Read and drop an oversize body before answering 413, as nginx's lingering close does: a client that
        sends its whole body before reading (urllib, curl without Expect) otherwise meets a closed socket and
        reports "broken pipe" instead of the 413. Bounded: bodies up to 4 x the limit (at least 64 MB), for at
        most ``timeout_s``; past either, the connection is simply closed."""
        if declared > max(4 * self.max_body, 64 * 1024**2):
            return

        async def drain() -> None:
            async for _ in request.stream():
                pass

        with contextlib.suppress(Exception):
            await asyncio.wait_for(drain(), self.config.timeout_s)

    async def uploads(self, request: Request) -> tuple[list[Upload], dict[str, Any], bool]:
        """The images of a v1 request, its JSON parameters, and whether it was a list (several results)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        data = await self.body(request)
        if kind.startswith("image/") or kind == "application/octet-stream":
            if not data:
                raise ApiError(400, "empty request body: send the image bytes")
            return [Upload("<body>", data)], {}, False
        if kind == "multipart/form-data":
            try:
                form = await request.form(max_files=self.config.max_files, max_fields=64)
            except Exception as exc:  # Starlette raises its own types for malformed or oversized forms
                raise ApiError(400, f"malformed multipart body ({exc})") from None
            files = [(key, value) for key, value in form.multi_items() if hasattr(value, "read")]
            if not files:
                raise ApiError(400, "multipart body holds no files")
            uploads = [Upload(value.filename or key, await value.read()) for key, value in files]
            return uploads, {}, len(uploads) > 1
        if kind == "application/json":  # parsed and base64-decoded off the event loop: bodies run to megabytes
            return await asyncio.to_thread(json_uploads, data, self.config.max_files)
        raise ApiError(415, f"unsupported content type {kind or '(none)'!r}: send image/*, multipart/form-data "
                       "or application/json")

    def decode(self, upload: Upload, crop: bool) -> np.ndarray:
        """In the pool, through the classifier's own loaders: bytes -> the views it scores (predict) or the whole
        RGB photo (explain), within the server's limits."""
        load = self.classifier.load_views if crop else self.classifier.load_photo
        return load(upload.data, upload.name, max_pixels=self.config.max_pixels, max_bytes=self.max_body)

    async def run(self, upload: Upload, kind: str, params: dict[str, Any] | None = None) -> Any:
        """Decode in the pool, queue for the model thread, wait. Decoding counts against both bounds: the
        decode backlog against ``queue_size`` (503 when the decoders are saturated) and its time against
        ``timeout_s`` (504). A prediction comes back as the classifier's ``Prediction``; one that failed in the
        model (non-finite scores) is that image's error, worded as the CLI words it."""
        if not self.engine.ready.is_set():
            raise ApiError(503, "the model is not ready yet" if self.engine.failed is None else
                           f"the model failed to start: {self.engine.failed}", {"Retry-After": "5"})
        if self.decoding >= self.config.queue_size:
            raise ApiError(503, f"server busy: {self.decoding} images are waiting to be decoded",
                           {"Retry-After": "1"})
        deadline = time.monotonic() + self.config.timeout_s
        loop = asyncio.get_running_loop()
        self.decoding += 1
        decoding = loop.run_in_executor(self.pool, self.decode, upload, kind == "predict")
        decoding.add_done_callback(self._decoded)  # when the thread is done, even after a timeout or a disconnect
        try:
            image = await asyncio.wait_for(asyncio.shield(decoding), self.config.timeout_s)
        except ImageLoadError as exc:
            self.metrics.decode_errors.labels(reason=exc.kind).inc()
            raise ApiError(400, f"{upload.name}: {exc.reason}") from None
        except TimeoutError:  # a decoding thread cannot be stopped: it still holds its place in the backlog
            raise ApiError(504, f"{upload.name}: not decoded within --timeout-s {self.config.timeout_s:g}") from None
        if kind == "explain":  # a whole decoded photo waits for each: bound them in bytes, not in count
            if self.explain_bytes + image.nbytes > MAX_EXPLAIN_QUEUE_BYTES:
                raise ApiError(503, f"server busy: {self.explain_bytes / 1e6:.0f} MB of photos are waiting to be "
                               "explained", {"Retry-After": "1"})
            self.explain_bytes += image.nbytes
        try:
            future = self.engine.submit(Job(kind, image, params or {}))
        except QueueFullError:
            if kind == "explain":
                self.explain_bytes -= image.nbytes
            raise ApiError(503, f"server busy: the queue of {self.config.queue_size} is full",
                           {"Retry-After": "1"}) from None
        if kind == "explain":
            size = image.nbytes
            future.add_done_callback(lambda _: self._on_loop(loop, self._explained, size))
        self.metrics.queue_depth.set(self.engine.depth())
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            future.cancel()
            raise ApiError(504, f"no result within --timeout-s {self.config.timeout_s:g}") from None
        if isinstance(result, Prediction) and not result.ok:
            raise ApiError(500, f"{upload.name}: {result.error}")
        return result

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
        """From the model thread: run ``callback`` on the event loop, unless the loop has already closed."""
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _explained(self, size: int) -> None:
        self.explain_bytes -= size

    def _decoded(self, future: asyncio.Future) -> None:
        self.decoding -= 1
        if not future.cancelled():
            future.exception()  # seen here, so a decode that outlived its request is not logged as unhandled

    # -- answers ---------------------------------------------------------------------------------------------

    def predictions(self, prediction: Prediction, topk: int) -> dict[str, Any]:
        """The v1 answer for one scored image (``Classifier.predict_views``)."""
        top = prediction.topk(topk, self.classifier.class_names)
        out: dict[str, Any] = {
            "predictions": [{"label": name if name else str(label), "class_id": label, "score": score}
                            for label, name, score in top],
            "pred_label": prediction.label, "pred_score": prediction.score}
        if prediction.class_name is not None:
            out["pred_class"] = prediction.class_name
        return out

    def topk(self, value: Any) -> int:
        """A JSON integer or a string of ASCII digits; 2.9, true, "1_0", "¹" and Infinity are refused (``int``
        alone would round, count true as 1, or raise from deep inside)."""
        classes = self.classifier.num_classes
        if value is None:  # JSON null: the default
            return min(DEFAULT_TOPK, classes)
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(422, f"topk must be an integer, got {short(value)}")
        k = value
        if not 1 <= k <= classes:
            raise ApiError(422, f"topk must be between 1 and {classes}, got {k}")
        return k

    def card(self) -> dict[str, Any]:
        c = self.classifier
        return {
            "name": self.config.name, "model": self.model_label, "version": __version__,
            "classes": list(c.class_names or ()), "num_classes": len(c.class_names or ()),
            "preset": c.preprocess.describe(), "crop": c.preprocess.crop, "backend": c.backend, "decode": c.decode,
            "precision": c.precision, "device": str(c.device), "ready": self.engine.ready.is_set(),
            "limits": {"max_body_mb": self.config.max_body_mb, "max_pixels": self.config.max_pixels,
                       "max_files": self.config.max_files, "max_batch": self.config.max_batch,
                       "max_delay_ms": self.config.max_delay_ms, "queue_size": self.config.queue_size,
                       "timeout_s": self.config.timeout_s},
            "explain": {"methods": list(METHODS), "note": None if (c.backend, c.precision) == ("eager", "fp32")
                        else "explanations run on the eager fp32 model"}}


def _route_template(app: FastAPI, scope: dict) -> str:
    """The metrics label of a request: its route's template (``/v2/models/{model}/infer``), or ``unmatched``, so that
    a scan of made-up paths cannot grow the label set (one series per path would)."""
    from starlette.routing import Match

    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", "unmatched")
        if match == Match.PARTIAL and partial is None:  # the path of a route, with another method (405)
            partial = getattr(route, "path", None)
    return partial or "unmatched"


def _png(rgb_or_rgba: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb_or_rgba).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def create_app(config: ServeConfig | None = None, classifier: Classifier | None = None) -> FastAPI:
    """The app; the engine starts (and warms up) with the app's lifespan and drains when it ends."""
    config = config or ServeConfig()
    server = Server(config, classifier)
    page = resources.files("inceptionv3.serve").joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        server.engine.start()
        if config.ready_before_start:
            await asyncio.to_thread(server.engine.ready.wait, 600)
            if server.engine.failed is not None:
                raise RuntimeError(f"the model failed to start: {server.engine.failed}")
        yield
        server.engine.stop()
        server.pool.shutdown(wait=True)

    app = FastAPI(title="inceptionv3", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = server
    open_paths = {"/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
    served_by = f"{socket.gethostname()}:{os.getpid()}"  # which process answered (replicas behind a proxy)

    @app.middleware("http")
    async def around(request: Request, call_next):
        started = time.monotonic()
        given = request.headers.get("x-request-id", "")
        request_id = given if re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", given) else uuid.uuid4().hex
        route = request.url.path
        endpoint = _route_template(app, request.scope)
        if config.api_key and route not in open_paths:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
                response = _error(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                  {"WWW-Authenticate": "Bearer"})
                response.headers["X-Request-ID"] = request_id
                server.metrics.requests.labels(endpoint=endpoint, code="401").inc()
                return response
        response = await call_next(request)  # ApiError becomes its JSON answer in the handler below
        response.headers["X-Request-ID"] = request_id
        response.headers["X-Served-By"] = served_by
        server.metrics.requests.labels(endpoint=endpoint, code=str(response.status_code)).inc()
        server.metrics.latency.labels(endpoint=endpoint).observe(time.monotonic() - started)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, problems)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A bug: the details go to the server's log, never into the answer (no paths, no command lines)."""
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server's log has the details")

    # -- the page, health, model card, metrics ------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data: "
                                           "blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                           "connect-src 'self'"})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "live"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if server.engine.ready.is_set() and server.engine.unhealthy:
            return _error(503, f"not ready: {server.engine.unhealthy}")
        if server.engine.ready.is_set():
            return JSONResponse({"status": "ready"})
        return _error(503, "not ready" if server.engine.failed is None else f"failed: {server.engine.failed}",
                      {"Retry-After": "5"})

    @app.get("/v1/models")
    async def models() -> dict:
        return server.card()

    @app.get("/metrics")
    async def metrics() -> Response:
        server.metrics.queue_depth.set(server.engine.depth())
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    # -- v1 -------------------------------------------------------------------------------------------------------

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        uploads, parameters, many = await server.uploads(request)
        k = server.topk(request.query_params.get("topk", parameters.get("top_k", parameters.get("topk"))))
        outcomes = await asyncio.gather(*(server.run(u, "predict") for u in uploads), return_exceptions=True)
        if not many:
            outcome = outcomes[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return JSONResponse(server.predictions(outcome, k))  # a Prediction
        results = []
        for i, (upload, outcome) in enumerate(zip(uploads, outcomes, strict=True)):
            if isinstance(outcome, ApiError):
                results.append({"index": i, "name": upload.name, "error": outcome.message, "status": outcome.status})
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append({"index": i, "name": upload.name, **server.predictions(outcome, k)})
        return JSONResponse({"results": results})

    @app.post("/v1/explain")
    async def explain(request: Request) -> JSONResponse:
        uploads, parameters, many = await server.uploads(request)
        if many:
            raise ApiError(422, "explain takes one image per request")
        query = request.query_params
        k = server.topk(query.get("topk", parameters.get("topk")))
        method = query.get("method", parameters.get("method", "gradcam"))
        if method not in METHODS:
            raise ApiError(422, f"method must be one of {', '.join(METHODS)}, got {method!r}")
        target = query.get("target", parameters.get("target"))
        try:
            index = resolve_target(target, server.classifier.class_names, server.classifier.num_classes)
        except InputError as exc:
            raise ApiError(422, str(exc).replace("--target", "target")) from None
        e = await server.run(uploads[0], "explain", {"target": index, "method": method, "topk": k})
        if e.error:
            raise ApiError(500, e.error)
        heatmap = jet(e.heatmap)
        alpha = np.full(heatmap.shape[:2] + (1,), 255, np.uint8)
        return JSONResponse({
            "predictions": [{"label": name or str(label), "class_id": label, "score": score}
                            for label, name, score in e.topk],
            "target": {"class_id": e.target, "label": e.target_name, "score": e.target_score},
            "method": e.method, "layer": e.layer, "empty": e.empty, "note": e.note,
            "crop_box": list(e.crop_box), "image_size": list(e.image_size),
            "heatmap_png": _png(np.concatenate([heatmap, alpha], axis=2)),
            "heatmap_values_png": _png(np.uint8(np.round(e.heatmap * 255)))})

    # -- Open Inference Protocol v2 ---------------------------------------------------------------------------

    from .oip import add_v2_routes

    add_v2_routes(app, server)
    return app


def config_dict(config: ServeConfig) -> dict[str, Any]:
    """The configuration without the API key, for logs."""
    out = asdict(config)
    out["api_key"] = "(set)" if config.api_key else None
    return out


def env_api_key() -> str | None:
    return os.environ.get("INCEPTIONV3_API_KEY") or None


__all__ = ["ApiError", "MODEL_NAME_PATTERN", "ServeConfig", "Server", "config_dict", "create_app", "env_api_key"]
