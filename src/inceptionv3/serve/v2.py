"""The Open Inference Protocol v2 (KServe's and Triton's HTTP/REST API), so that existing clients and platforms
can call the server (``grpc_v2`` speaks the same protocol over gRPC, through the functions here).

Each model under its name (one model: ``--name``, default ``inceptionv3``). Input ``image``, datatype BYTES, shape
[N], each element an encoded image: base64 strings in JSON, or raw bytes with Triton's binary-data extension, where
the JSON header is the first ``Inference-Header-Content-Length`` bytes of the body. Output ``probabilities``, FP32
[N, classes]; with Triton's classification extension (``"parameters": {"classification": k}`` on the requested
output) it is BYTES [N, k] instead, each element ``"score:index:label"``, best first. Output ``features``, FP32 (or
FP16 with ``"parameters": {"datatype": "FP16"}``) [N, 2048]: the pooled vector before the classifier. Outputs are
always JSON.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..version import __version__
from .server import Models, Server
from .wire import ApiError, Upload, parse_json, short


def bytes_elements(raw: bytes, where: str) -> list[bytes]:
    """Triton's binary BYTES tensor: each element a little-endian uint32 length, then that many bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ApiError(400, f"{where}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ApiError(400, f"{where}: BYTES element of {length} bytes runs past the data")
        out.append(raw[offset:offset + length])
        offset += length
    return out


def parse_infer(body: bytes, header_length: str | None, max_items: int) -> tuple[dict[str, Any], list[bytes]]:
    """The request's JSON and the images of its ``image`` input, in order."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ApiError(400, "Inference-Header-Content-Length does not fit the body")
        head, rest = body[:int(header_length)], body[int(header_length):]
    else:
        head, rest = body, b""
    request = parse_json(head, "inference request")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ApiError(400, 'inference request needs "inputs": [{"name": "image", "datatype": "BYTES", ...}]')
    if len(request["inputs"]) != 1:
        raise ApiError(400, f"this model takes one input, 'image'; the request has {len(request['inputs'])}")
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict):
        raise ApiError(400, "each input must be an object")
    if not isinstance(tensor.get("parameters") or {}, dict):
        raise ApiError(400, "an input's parameters must be an object")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    check_input(tensor.get("name"), tensor.get("datatype"))
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(rest):
            raise ApiError(400, f"input {tensor.get('name')!r}: binary_data_size does not fit the body")
        images = bytes_elements(rest[:size], "input 'image'")
    else:
        data = tensor.get("data")
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise ApiError(400, "input 'image' data must be base64 strings")
        try:
            images = [base64.b64decode(d, validate=True) for d in data]
        except (binascii.Error, ValueError):
            raise ApiError(400, "input 'image' holds a string that is not valid base64") from None
    return request, check_images(tensor.get("shape"), images, max_items)


def check_input(name: Any, datatype: Any) -> None:
    """The one input this model takes: ``image``, BYTES (REST and gRPC)."""
    if name != "image":
        raise ApiError(400, f"unknown input {short(name)}: this model takes one input, 'image'")
    if datatype != "BYTES":
        raise ApiError(400, f"input 'image' must have datatype BYTES, got {short(datatype)}")


def check_images(shape: Any, images: list[bytes], max_items: int) -> list[bytes]:
    """The images of the ``image`` input, once its shape agrees with them and their count is within the limit."""
    if not isinstance(shape, list) or not shape or shape[0] != len(images):
        raise ApiError(400, f"input 'image' shape {short(shape)} does not match its {len(images)} elements")
    if not images or len(images) > max_items:
        raise ApiError(400, f"input 'image' must hold 1 to {max_items} images, got {len(images)}")
    return images


def requested_outputs(request_json: dict[str, Any], topk) -> dict[str, Any]:
    """The outputs asked for, by name: ``probabilities`` (the value: Triton's classification k, or None for the
    FP32 scores) and ``features`` (the value: its datatype, FP32 or FP16). No ``outputs``: the probabilities."""
    outputs = request_json.get("outputs") or [{"name": "probabilities"}]
    if not isinstance(outputs, list):
        raise ApiError(400, "outputs must be a list")
    chosen: dict[str, Any] = {}
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") not in ("probabilities", "features"):
            raise ApiError(400, f"unknown output {output!r}: this model has 'probabilities' and 'features'")
        parameters = output.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ApiError(400, "an output's parameters must be an object")
        if output["name"] == "features":
            datatype = parameters.get("datatype", "FP32")
            if datatype not in ("FP32", "FP16"):
                raise ApiError(400, f"output 'features' comes as FP32 or FP16, not {datatype!r}")
            chosen["features"] = datatype
        else:
            value = parameters.get("classification")
            chosen["probabilities"] = None if value is None else topk(value)
    return chosen


def features_tensor(found: list[dict], datatype: str) -> dict[str, Any]:
    """The ``features`` output: the pooled 2048-d vector of each image, [N, 2048]."""
    dtype = {"FP32": "float32", "FP16": "float16"}[datatype]
    return {"name": "features", "datatype": datatype, "shape": [len(found), len(found[0]["2048"])],
            "data": [float(v) for f in found for v in f["2048"].astype(dtype)]}


def output_tensor(predictions: list, k: int | None, class_names) -> dict[str, Any]:
    """The ``probabilities`` output: FP32 [N, classes], or with classification BYTES [N, k] of
    ``"score:index:label"``, best first."""
    if k:
        data = [f"{score:.6f}:{label}" + (f":{name}" if name else "")
                for p in predictions for label, name, score in p.topk(k, class_names)]
        return {"name": "probabilities", "datatype": "BYTES", "shape": [len(predictions), k], "data": data}
    return {"name": "probabilities", "datatype": "FP32", "shape": [len(predictions), len(predictions[0].scores)],
            "data": [float(v) for p in predictions for v in p.scores]}


def model_metadata(server: Server) -> dict[str, Any]:
    """A model's v2 metadata (REST's JSON; gRPC fills its message from the same dict)."""
    return {"name": server.name, "versions": ["1"], "platform": "pytorch_inceptionv3",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, server.classifier.num_classes]},
                        {"name": "features", "datatype": "FP32", "shape": [-1, 2048]}]}


def repository_index(models: Models) -> list[dict[str, Any]]:
    """Triton's model-repository extension: each model, and whether it is ready (with why not)."""
    out = []
    for name, server in models.servers.items():
        reason = server.not_ready()
        out.append({"name": name, "version": "1", "state": "READY" if reason is None else "UNAVAILABLE",
                    **({} if reason is None else {"reason": reason})})
    return out


SERVER_METADATA = {"name": "inceptionv3", "version": __version__,
                   "extensions": ["classification", "binary_tensor_data", "model_repository"]}


async def infer(server: Server, images: list[bytes], chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """Score the images of one request: each output asked for, as REST's JSON tensor (name, datatype, shape and
    the flat ``data``); gRPC re-encodes the same tensors."""
    uploads = [Upload(f"image[{i}]", data) for i, data in enumerate(images)]
    outputs = []
    if "probabilities" in chosen:
        predictions = await asyncio.gather(*(server.run(u, "predict") for u in uploads))
        outputs.append(output_tensor(predictions, chosen["probabilities"], server.classifier.class_names))
    if "features" in chosen:
        found = await asyncio.gather(*(server.run(u, "features", {"taps": ["2048"]}) for u in uploads))
        outputs.append(features_tensor(found, chosen["features"]))
    return outputs


def router(models: Models) -> APIRouter:
    """The v2 model routes over the app's models (health is in ``health``)."""
    routes = APIRouter()

    @routes.get("/v2")
    async def server_metadata() -> dict:
        return SERVER_METADATA

    @routes.post("/v2/repository/index")
    async def index() -> list:
        return repository_index(models)

    @routes.get("/v2/models/{model}")
    async def metadata(model: str) -> dict:
        return model_metadata(models.get(model))

    @routes.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> JSONResponse:
        server = models.get(model)
        ok = server.not_ready() is None
        return JSONResponse({"name": server.name, "ready": ok}, status_code=200 if ok else 503)

    @routes.post("/v2/models/{model}/infer")
    async def infer_route(model: str, request: Request) -> JSONResponse:
        server = models.get(model)
        body = await server.body(request)
        request_json, images = await asyncio.to_thread(  # off the event loop: JSON bodies run to megabytes
            parse_infer, body, request.headers.get("inference-header-content-length"), server.config.max_files)
        chosen = requested_outputs(request_json, server.topk)
        response: dict[str, Any] = {"model_name": server.name, "model_version": "1",
                                    "outputs": await infer(server, images, chosen)}
        if "id" in request_json:
            response["id"] = request_json["id"]
        return JSONResponse(response)

    return routes


__all__ = ["SERVER_METADATA", "bytes_elements", "check_images", "check_input", "features_tensor", "infer",
           "model_metadata", "output_tensor", "parse_infer", "repository_index", "requested_outputs", "router"]
