"""The Open Inference Protocol v2 over gRPC (``--grpc-port``): KServe's ``inference.GRPCInferenceService``, which
tritonclient's and KServe's gRPC clients speak, plus ``grpc.health.v1.Health`` and server reflection.

It is the REST routes' twin, not a second server: it runs on the same event loop, asks the same ``Models`` for
the model and the API key, checks the same ``image`` input (``v2.check_input``/``check_images``) and the same
outputs (``v2.requested_outputs``), and scores through ``v2.infer`` on the same model threads. An input's images
come as ``raw_input_contents`` (Triton's length-prefixed BYTES) or as ``contents.bytes_contents``; outputs go out
as ``raw_output_contents``, which both clients read. A refusal is the REST status's gRPC code (:data:`CODES`) with
the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from grpc_reflection.v1alpha import reflection

from . import protos, v2
from .server import REQUEST_ID, Models, log_access
from .wire import ApiError, short

logger = logging.getLogger("inceptionv3")


_C = grpc.StatusCode
CODES = {400: _C.INVALID_ARGUMENT, 401: _C.UNAUTHENTICATED, 404: _C.NOT_FOUND, 408: _C.DEADLINE_EXCEEDED,
         413: _C.RESOURCE_EXHAUSTED, 415: _C.INVALID_ARGUMENT, 422: _C.INVALID_ARGUMENT, 429: _C.RESOURCE_EXHAUSTED,
         500: _C.INTERNAL, 503: _C.UNAVAILABLE, 504: _C.DEADLINE_EXCEEDED}
"""The gRPC code of each REST status the server answers with (the message is the same)."""

_OPEN = frozenset({"ServerLive", "ServerReady", "Check"})  # the probes: open, as /v2/health/* are over REST


def _parameter(value) -> Any:
    """An ``InferParameter``'s value, whichever of its kinds is set."""
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _images(request, max_items: int) -> list[bytes]:
    """The images of a ``ModelInferRequest``, checked as REST checks them."""
    if len(request.inputs) != 1:
        raise ApiError(400, f"this model takes one input, 'image'; the request has {len(request.inputs)}")
    tensor = request.inputs[0]
    v2.check_input(tensor.name, tensor.datatype)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise ApiError(400, "raw_input_contents must hold one entry per input (this model has one)")
        images = v2.bytes_elements(request.raw_input_contents[0], "input 'image'")
    else:
        images = list(tensor.contents.bytes_contents)
    return v2.check_images(list(tensor.shape), images, max_items)


def _outputs(request) -> dict[str, Any]:
    """The requested outputs, as REST's JSON describes them, so that ``v2.requested_outputs`` checks both."""
    return {"outputs": [{"name": o.name, "parameters": {k: _parameter(v) for k, v in o.parameters.items()}}
                        for o in request.outputs]}


def _raw(tensor: dict[str, Any]) -> bytes:
    """A JSON output tensor's values as ``raw_output_contents``: little-endian numbers, or length-prefixed BYTES."""
    if tensor["datatype"] == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in tensor["data"]))
    return np.asarray(tensor["data"], {"FP32": "<f4", "FP16": "<f2"}[tensor["datatype"]]).tobytes()


class Service:
    """The handlers of both services over the app's ``Models``."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self.stopping = asyncio.Event()
        """Set when the server begins to stop: health answers NOT_SERVING and every Watch stream ends."""
        m = protos.message
        self.live = m("inference.ServerLiveResponse")
        self.ready = m("inference.ServerReadyResponse")
        self.model_ready_response = m("inference.ModelReadyResponse")
        self.server_metadata_response = m("inference.ServerMetadataResponse")
        self.model_metadata_response = m("inference.ModelMetadataResponse")
        self.infer_response = m("inference.ModelInferResponse")
        self.index_response = m("inference.RepositoryIndexResponse")
        self.health = m("grpc.health.v1.HealthCheckResponse")

    # -- inference.GRPCInferenceService ------------------------------------------------------------------------

    async def ServerLive(self, request, context):  # noqa: N802 (the protocol's method names)
        return self.live(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return self.ready(ready=self.models.not_ready() is None)

    async def ModelReady(self, request, context):  # noqa: N802
        server = self._model(request.name, request.version)
        return self.model_ready_response(ready=server.not_ready() is None)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return self.server_metadata_response(**v2.SERVER_METADATA)

    async def ModelMetadata(self, request, context):  # noqa: N802
        return self.model_metadata_response(**v2.model_metadata(self._model(request.name, request.version)))

    async def RepositoryIndex(self, request, context):  # noqa: N802
        index = [m for m in v2.repository_index(self.models) if not request.ready or m["state"] == "READY"]
        return self.index_response(models=index)

    async def ModelInfer(self, request, context):  # noqa: N802
        server = self._model(request.model_name, request.model_version)
        images = _images(request, server.config.max_files)
        chosen = v2.requested_outputs(_outputs(request), server.topk)
        remaining = context.time_remaining()  # the client's deadline, when it is shorter than the server's
        try:
            tensors = await asyncio.wait_for(v2.infer(server, images, chosen), remaining)
        except asyncio.TimeoutError:  # TimeoutError from 3.11; its own class on 3.10
            raise ApiError(504, f"no result within the call's deadline ({remaining:.3g} s)") from None
        response = self.infer_response(model_name=server.name, model_version="1", id=request.id)
        for tensor in tensors:
            response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
            response.raw_output_contents.append(_raw(tensor))
        return response

    def _model(self, name: str, version: str):
        server = self.models.get(name or None)
        if version not in ("", "1"):
            raise ApiError(404, f"model {name!r} has version '1' only, not {version!r}")
        return server

    # -- grpc.health.v1.Health -----------------------------------------------------------------------------------

    def _status(self, service: str) -> int:
        """SERVING when every model is ready ("" or the inference service), or the named model is; NOT_SERVING
        once the server is stopping."""
        if self.stopping.is_set():
            return 2 if service in ("", protos.INFERENCE_SERVICE) or service in self.models.servers else 3
        if service in ("", protos.INFERENCE_SERVICE):
            return 1 if self.models.not_ready() is None else 2
        server = self.models.servers.get(service)
        return 3 if server is None else 1 if server.not_ready() is None else 2

    async def Check(self, request, context):  # noqa: N802
        status = self._status(request.service)
        if status == 3:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return self.health(status=status)

    async def Watch(self, request, context):  # noqa: N802
        """The status now, then each change (checked every half second) until the client leaves or the server
        stops (its last answer then is NOT_SERVING)."""
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield self.health(status=status)
                last = status
            if self.stopping.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)


def _guarded(models: Models, method: str, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A unary handler behind the API key and the per-key limit, with REST's refusals as gRPC codes, its count and
    latency in the metrics, and its access-log line."""
    route = f"grpc:{method}"

    async def call(request, context):
        started, code = time.monotonic(), "OK"
        metadata = dict(context.invocation_metadata() or ())
        key = models.client_key(metadata.get("authorization", ""), None if method.rsplit("/", 1)[1] not in _OPEN
                                else "/v2/health/ready")
        try:
            if key is None:
                raise ApiError(401, "missing or wrong API key (metadata authorization: Bearer KEY)")
            if (why := models.over_limit(key)) is not None:
                raise ApiError(429, why)
            models.in_flight[key] += 1
            try:
                return await handler(request, context)
            finally:
                models.in_flight[key] -= 1
        except ApiError as exc:
            status = CODES.get(exc.status, _C.INTERNAL)
            code = status.name
            await context.abort(status, exc.message)
        except grpc.aio.AbortError:  # the handler answered with its own code
            code = getattr(context.code(), "name", "ABORTED") if hasattr(context, "code") else "ABORTED"
            raise
        except asyncio.CancelledError:  # the client left, or its deadline passed
            code = "CANCELLED"
            raise
        except Exception as exc:
            logger.error("internal error on gRPC %s", method, exc_info=exc)
            code = "INTERNAL"
            await context.abort(_C.INTERNAL, f"internal error ({type(exc).__name__}); the server's log has the "
                                "details")
        finally:
            models.metrics.requests.labels(endpoint=route, code=code).inc()
            models.metrics.latency.labels(endpoint=route).observe(time.monotonic() - started)
            if models.config.access_log:
                given = metadata.get("x-request-id") or getattr(request, "id", "") or ""
                model = getattr(request, "model_name", None) or getattr(request, "name", None) or ""
                log_access(given if REQUEST_ID.fullmatch(given) else None, "POST", route,
                           model if model in models.servers else models.default.name if not model else short(model),
                           code, started, context.peer())
    return call


async def start_grpc(models: Models, port: int, host: str = "127.0.0.1"):
    """The gRPC server on ``host:port`` (0: a free port), started on the running event loop. Messages over
    ``--max-body-mb`` are refused by gRPC itself (RESOURCE_EXHAUSTED), and so are calls beyond 4 x ``--queue-size``
    at once."""
    service = Service(models)
    limit = int(models.config.max_body_mb * 1024 * 1024)
    # no SO_REUSEPORT: a second server on the same port must fail to start, not silently take half the calls
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=4 * models.config.queue_size)
    for name, methods, streaming in ((protos.INFERENCE_SERVICE, protos.INFERENCE_METHODS, ()),
                                     (protos.HEALTH_SERVICE, protos.HEALTH_METHODS, ("Watch",))):
        package = name.rpartition(".")[0]
        handlers = {}
        for method, (request, response) in methods.items():
            decode = protos.message(f"{package}.{request}").FromString
            encode = protos.message(f"{package}.{response}").SerializeToString
            if method in streaming:
                handlers[method] = grpc.unary_stream_rpc_method_handler(
                    getattr(service, method), request_deserializer=decode, response_serializer=encode)
            else:
                handlers[method] = grpc.unary_unary_rpc_method_handler(
                    _guarded(models, f"/{name}/{method}", getattr(service, method)),
                    request_deserializer=decode, response_serializer=encode)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    reflection.enable_server_reflection((protos.INFERENCE_SERVICE, protos.HEALTH_SERVICE,
                                         reflection.SERVICE_NAME), server, pool=protos.POOL)
    port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return GrpcServer(server, service, port)


class GrpcServer:
    """The running gRPC server, its port, and how it stops: health turns NOT_SERVING and Watch streams end, then
    calls in flight get up to ``timeout_s`` to finish."""

    def __init__(self, server, service: Service, port: int) -> None:
        self.server, self.service, self.port = server, service, port

    async def stop(self, grace: float) -> None:
        self.service.stopping.set()
        await self.server.stop(grace=grace)


__all__ = ["CODES", "GrpcServer", "Service", "start_grpc"]
