"""The state behind every route: the classifier, its model thread (``Engine``), the decode pool, the limits and
the metrics. Routes read a request with :meth:`Server.body` or :meth:`Server.uploads`, score each image with
:meth:`Server.run`, and answer from the classifier's ``Prediction``: decode, predict and encode all call the
library, so the server and the CLI give the same scores and the same per-image errors."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ..decode import ImageLoadError
from ..errors import InputError
from ..explain import DEFAULT_LAYER, METHODS, forward_passes
from ..inference import Classifier, Prediction
from ..version import __version__
from ..weights import resolve_model
from .config import ModelSpec, ServeConfig, model_specs
from .engine import Engine, Job, NonFiniteOutput, Observer, QueueFullError
from .metrics import ServerMetrics
from .wire import ApiError, Upload, json_uploads, short

DEFAULT_TOPK = 5

#: Decoded photos that may wait for explanations at once: a 40-megapixel photo is 120 MB, and each explanation
#: holds its whole photo until the model thread reaches it.
MAX_EXPLAIN_QUEUE_BYTES = 512 * 1024**2


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every answer other than 200 is ``{"error": message}`` with its status."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _passes(model, method: str) -> int | None:
    """What ``method`` costs on this model at the default layer; None where it cannot run there."""
    try:
        return forward_passes(model, method, DEFAULT_LAYER)
    except InputError:
        return None


class Server:
    """The state behind the routes: the classifier, the engine, the decode pool and the metrics."""

    def __init__(self, config: ServeConfig, classifier: Classifier | None = None, spec: ModelSpec | None = None,
                 metrics: ServerMetrics | None = None) -> None:
        self.config = config
        spec = spec or model_specs(config)[0]
        self.name = spec.name
        if classifier is None:
            classifier = Classifier(spec.model, spec.weights or True, device=config.device, backend=config.backend,
                                    precision=config.precision, expected_images=10_000, decode=config.decode)
        self.classifier = classifier
        self.metrics = metrics or ServerMetrics()
        #: What each method costs here (measured before the model thread starts, which then owns the model).
        self.explain_passes = {m: p for m in METHODS if (p := _passes(classifier.model, m)) is not None}
        m = self.metrics
        observer = Observer(queue_wait=m.queue_wait.labels(model=self.name).observe,
                            inference=m.inference.labels(model=self.name).observe,
                            batch_size=m.batch_size.labels(model=self.name).observe)
        self.engine = Engine(classifier, max_batch=config.max_batch, max_delay_ms=config.max_delay_ms,
                             queue_size=config.queue_size, observer=observer, name=self.name,
                             incoming=lambda: self.decoding)
        self.pool = ThreadPoolExecutor(max_workers=max(1, config.decode_workers),
                                       thread_name_prefix=f"inceptionv3-decode-{self.name}")
        self.max_body = int(config.max_body_mb * 1024 * 1024)
        self.decoding = 0  # images in the decode pool or waiting for it (changed on the event loop only)
        self.explain_bytes = 0  # decoded photos queued for explanation (changed on the event loop only)
        info = getattr(classifier.model, "weights_info", None)
        self.model_label = str((info.name or info.path) if info else resolve_model(spec.model, spec.weights).label)
        m.model_info.labels(model=self.name, weights=self.model_label, preset=classifier.preprocess.name,
                            backend=classifier.backend, precision=classifier.precision,
                            device=str(classifier.device)).set(1)

    def set_queue_depth(self) -> None:
        self.metrics.queue_depth.labels(model=self.name).set(self.engine.depth())

    def not_ready(self) -> str | None:
        """Why the server cannot take images now (starting, failed, or unhealthy after a model error), or None."""
        engine = self.engine
        if not engine.ready.is_set():
            return "not ready" if engine.failed is None else f"failed: {engine.failed}"
        return f"not ready: {engine.unhealthy}" if engine.unhealthy else None

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
        except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11; its own class on 3.10
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
        decoding = loop.run_in_executor(self.pool, self.decode, upload, kind != "explain")
        decoding.add_done_callback(self._decoded)  # when the thread is done, even after a timeout or a disconnect
        try:
            image = await asyncio.wait_for(asyncio.shield(decoding), self.config.timeout_s)
        except ImageLoadError as exc:
            self.metrics.decode_errors.labels(model=self.name, reason=exc.kind).inc()
            raise ApiError(400, f"{upload.name}: {exc.reason}") from None
        except asyncio.TimeoutError:  # a decoding thread cannot be stopped: it still holds its place in the backlog
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
        self.set_queue_depth()
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            future.cancel()
            raise ApiError(504, f"no result within --timeout-s {self.config.timeout_s:g}") from None
        except NonFiniteOutput as exc:
            raise ApiError(500, f"{upload.name}: {exc}") from None
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

    def feature_request(self, taps: Any, dtype: Any) -> tuple[list[str], str]:
        """The taps (a list, or a comma-separated string; default the pooled ``2048``) and the float type
        (``float32`` or ``float16``) of a features request, or a 422 naming the choices."""
        from ..fid_network import LAYERS

        if taps is None:
            taps = ["2048"]
        if isinstance(taps, str):
            taps = [t.strip() for t in taps.split(",") if t.strip()]
        if not isinstance(taps, list) or not taps or not all(isinstance(t, str) and t in LAYERS for t in taps):
            raise ApiError(422, f"taps must be some of {', '.join(LAYERS)}, got {short(taps)}")
        if dtype not in (None, "float32", "float16"):
            raise ApiError(422, f"dtype must be float32 or float16, got {short(dtype)}")
        return list(dict.fromkeys(taps)), dtype or "float32"

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
            "name": self.name, "model": self.model_label, "version": __version__,
            "classes": list(c.class_names or ()), "num_classes": len(c.class_names or ()),
            "preset": c.preprocess.describe(), "crop": c.preprocess.crop, "backend": c.backend, "decode": c.decode,
            "precision": c.precision, "device": str(c.device), "ready": self.engine.ready.is_set(),
            "limits": {"max_body_mb": self.config.max_body_mb, "max_pixels": self.config.max_pixels,
                       "max_files": self.config.max_files, "max_batch": self.config.max_batch,
                       "max_delay_ms": self.config.max_delay_ms, "queue_size": self.config.queue_size,
                       "timeout_s": self.config.timeout_s},
            "explain": {"methods": [m for m, p in self.explain_passes.items() if p <= self.config.explain_max_passes],
                        "passes": self.explain_passes,
                        "note": None if (c.backend, c.precision) == ("eager", "fp32")
                        else "explanations run on the eager fp32 model"}}


class Models:
    """The models one process serves, by their v2 names, each a ``Server`` with its own model thread; the first is
    the default of the v1 routes. The settings that are the process's (API keys, per-key concurrency, the access
    log) are read from the first's config, which every model shares."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = {server.name: server for server in servers}
        self.default = servers[0]
        self.config = self.default.config
        self.metrics = self.default.metrics
        self.in_flight: Counter[str] = Counter()  # requests being answered, per API key (on the event loop only)

    @classmethod
    def build(cls, config: ServeConfig, classifiers: Classifier | Mapping[str, Classifier] | None = None) -> Models:
        """One ``Server`` per ``--model`` (or per given classifier, by name), sharing one metrics registry."""
        metrics = ServerMetrics()
        if isinstance(classifiers, Mapping):
            return cls([Server(config, c, ModelSpec(name, None, None), metrics) for name, c in classifiers.items()])
        specs = model_specs(config)
        if classifiers is not None:
            return cls([Server(config, classifiers, specs[0], metrics)])
        return cls([Server(config, None, spec, metrics) for spec in specs])

    def get(self, name: str | None) -> Server:
        """The model of that name (None: the default), or a 404 that lists the names."""
        if name is None:
            return self.default
        server = self.servers.get(name)
        if server is None:
            raise ApiError(404, f"unknown model {short(name)}; this server has {', '.join(map(repr, self.servers))}")
        return server

    def not_ready(self) -> str | None:
        """Why the process cannot take images for every model, or None (readiness is all of them)."""
        for name, server in self.servers.items():
            reason = server.not_ready()
            if reason is not None:
                return reason if len(self.servers) == 1 else f"{name}: {reason}"
        return None

    def starting(self) -> bool:
        """Some model is still warming up (a 503 that will pass, so it carries Retry-After)."""
        return any(not s.engine.ready.is_set() for s in self.servers.values())

    def client_key(self, authorization: str, path: str | None = None) -> str | None:
        """The key an ``Authorization`` value carries, if it is one of ``--api-key`` (comma-separated); "" where
        none is needed (no keys set, or an open path); None when it is missing or wrong. Every key is compared in
        constant time. REST and gRPC both ask here."""
        api_keys = self.config.api_key
        if not api_keys or path in OPEN_PATHS:
            return ""
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode()
        matched = None
        for key in (k.strip() for k in api_keys.split(",") if k.strip()):
            if hmac.compare_digest(given, key.encode()) and scheme.lower() == "bearer":
                matched = key
        return matched

    def over_limit(self, key: str) -> str | None:
        """Why a request of ``key`` must wait (429: its requests in flight are at ``--max-concurrency``), or None."""
        limit = self.config.max_concurrency
        if key and limit and self.in_flight[key] >= limit:
            return (f"this key has {self.in_flight[key]} requests in flight, the most allowed "
                    f"(--max-concurrency {limit})")
        return None

    def start(self) -> None:
        for server in self.servers.values():
            server.engine.start()

    def settle(self, timeout: float) -> BaseException | None:
        """Wait for every warm-up to end; the first failure, if any."""
        for server in self.servers.values():
            server.engine.settled.wait(timeout)
        return next((s.engine.failed for s in self.servers.values() if s.engine.failed is not None), None)

    def stop(self) -> None:
        for server in self.servers.values():
            server.engine.stop()
            server.pool.shutdown(wait=True)


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A client's request id that is echoed and logged; any other is replaced (REST) or dropped (gRPC)."""

access_logger = logging.getLogger("inceptionv3.access")


def log_access(request_id: str | None, method: str, route: str, model: str, status, started: float,
               client: str | None) -> None:
    """One ``--access-log`` line, the same for REST and gRPC: never a body or a key."""
    access_logger.info(json.dumps({
        "time": round(time.time(), 3), "request_id": request_id, "method": method, "route": route, "model": model,
        "status": status, "ms": round((time.monotonic() - started) * 1000, 2), "client": client}))


OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
"""Paths that stay open when ``--api-key`` is set: the page and the probes (never ``/metrics``)."""


__all__ = ["DEFAULT_TOPK", "MAX_EXPLAIN_QUEUE_BYTES", "OPEN_PATHS", "REQUEST_ID", "Models", "Server",
           "error_response", "log_access"]
