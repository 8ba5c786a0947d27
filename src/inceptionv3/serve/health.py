"""Liveness, readiness and metrics: the routes a load balancer, Kubernetes or Prometheus call, in both the
server's own paths (``/healthz``, ``/readyz``) and the v2 protocol's (``/v2/health/live``, ``/v2/health/ready``).
They stay open when ``--api-key`` is set, except ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from .server import Server, error_response

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def router(server: Server) -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz")
    async def healthz() -> dict:
        return {"status": "live"}

    @routes.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = server.not_ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return error_response(503, reason, None if server.engine.ready.is_set() else {"Retry-After": "5"})

    @routes.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @routes.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = server.not_ready() is None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @routes.get("/metrics")
    async def metrics() -> Response:
        server.metrics.queue_depth.set(server.engine.depth())
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    return routes


__all__ = ["OPEN_PATHS", "router"]
