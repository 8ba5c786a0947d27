"""The v1 API and the page: ``POST /v1/predict`` (one image or several), ``POST /v1/features`` (feature vectors),
``POST /v1/explain`` (one image, a heatmap), ``GET /v1/models`` (the model card) and ``GET /`` (the page)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from ..errors import InputError
from ..explain import DEFAULT_LAYER, METHODS, Explanation, jet, resolve_target
from .server import Models, Server
from .wire import ApiError, Upload, short

PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
               "script-src 'unsafe-inline'; connect-src 'self'")


def _png(rgb_or_rgba: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb_or_rgba).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_body(e: Explanation) -> dict[str, Any]:
    """The v1 answer for one explanation: the top classes, the target, and the heatmap as two PNGs (coloured with
    an alpha channel for overlays, and the raw 0-255 values)."""
    heatmap = jet(e.heatmap)
    alpha = np.full(heatmap.shape[:2] + (1,), 255, np.uint8)
    return {
        "predictions": [{"label": name or str(label), "class_id": label, "score": score}
                        for label, name, score in e.topk],
        "target": {"class_id": e.target, "label": e.target_name, "score": e.target_score},
        "method": e.method, "layer": e.layer, "empty": e.empty, "note": e.note,
        "crop_box": list(e.crop_box), "image_size": list(e.image_size),
        "heatmap_png": _png(np.concatenate([heatmap, alpha], axis=2)),
        "heatmap_values_png": _png(np.uint8(np.round(e.heatmap * 255)))}


def _answer(uploads: list[Upload], outcomes: list, many: bool, body: Callable[[Any], dict]) -> JSONResponse:
    """One image's answer, or ``{"results": [...]}`` in input order where a bad image gets its error and status in
    its place while the others are answered."""
    if not many:
        if isinstance(outcomes[0], BaseException):
            raise outcomes[0]
        return JSONResponse(body(outcomes[0]))
    results = []
    for i, (upload, outcome) in enumerate(zip(uploads, outcomes, strict=True)):
        if isinstance(outcome, ApiError):
            results.append({"index": i, "name": upload.name, "error": outcome.message, "status": outcome.status})
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append({"index": i, "name": upload.name, **body(outcome)})
    return JSONResponse({"results": results})


def router(models: Models) -> APIRouter:
    """Each route serves the default model, or the one that ``?model=`` (or the JSON ``parameters.model``) names."""
    routes = APIRouter()

    def pick(request: Request, parameters: dict[str, Any] | None = None) -> Server:
        name = request.query_params.get("model", (parameters or {}).get("model"))
        if name is not None and not isinstance(name, str):
            raise ApiError(422, f"model must be a string, got {short(name)}")
        server = models.get(name)
        request.state.model = server.name  # for the access log
        return server
    page = resources.files("inceptionv3.serve").joinpath("page.html").read_text(encoding="utf-8")

    @routes.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @routes.get("/v1/models")
    async def default_card() -> dict:
        """The default model's card, and the names of every model served (the page offers them)."""
        return {**models.default.card(), "models": list(models.servers)}

    @routes.get("/v1/models/{model}")
    async def card(model: str) -> dict:
        return {**models.get(model).card(), "models": list(models.servers)}

    @routes.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        uploads, parameters, many = await models.default.uploads(request)
        server = pick(request, parameters)
        k = server.topk(request.query_params.get("topk", parameters.get("top_k", parameters.get("topk"))))
        outcomes = await asyncio.gather(*(server.run(u, "predict") for u in uploads), return_exceptions=True)
        return _answer(uploads, outcomes, many, lambda prediction: server.predictions(prediction, k))

    @routes.post("/v1/features")
    async def features(request: Request) -> JSONResponse:
        """Feature vectors (the pooled 2048-d one by default), as ``inceptionv3 features --model`` computes them."""
        uploads, parameters, many = await models.default.uploads(request)
        server = pick(request, parameters)
        query = request.query_params
        taps, dtype = server.feature_request(query.get("taps", parameters.get("taps")),
                                             query.get("dtype", parameters.get("dtype")))
        outcomes = await asyncio.gather(*(server.run(u, "features", {"taps": taps}) for u in uploads),
                                        return_exceptions=True)

        return _answer(uploads, outcomes, many, lambda found: {
            "features": {tap: found[tap].astype(dtype).tolist() for tap in taps}, "dtype": dtype})

    @routes.post("/v1/explain")
    async def explain(request: Request) -> JSONResponse:
        uploads, parameters, many = await models.default.uploads(request)
        server = pick(request, parameters)
        if many:
            raise ApiError(422, "explain takes one image per request")
        query = request.query_params
        k = server.topk(query.get("topk", parameters.get("topk")))
        method = query.get("method", parameters.get("method", "gradcam"))
        if method not in METHODS:
            raise ApiError(422, f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method not in server.explain_passes:
            raise ApiError(422, f"method {method} cannot run at {DEFAULT_LAYER} on this model")
        if server.explain_passes[method] > server.config.explain_max_passes:
            raise ApiError(422, f"method {method} costs {server.explain_passes[method]} network passes per image; this "
                           f"server allows {server.config.explain_max_passes} (--explain-max-passes)")
        try:
            index = resolve_target(query.get("target", parameters.get("target")), server.classifier.class_names,
                                   server.classifier.num_classes)
        except InputError as exc:
            raise ApiError(422, str(exc).replace("--target", "target")) from None
        e = await server.run(uploads[0], "explain", {"target": index, "method": method, "topk": k})
        if e.error:
            raise ApiError(500, e.error)
        return JSONResponse(explanation_body(e))

    return routes


__all__ = ["explanation_body", "router"]
