"""Liveness, readiness and metrics: the routes a load balancer, Kubernetes or Prometheus call, in both the
server's own paths (``/healthz``, ``/readyz``) and the v2 protocol's (``/v2/health/live``, ``/v2/health/ready``).
They stay open when ``--api-key`` is set, except ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from .server import OPEN_PATHS, Models, error_response


def router(models: Models) -> APIRouter:
    """Readiness is every model's: a process that serves two is ready when both are."""
    routes = APIRouter()

    @routes.get("/healthz")
    async def healthz() -> dict:
        return {"status": "live"}

    @routes.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = models.not_ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return error_response(503, reason, {"Retry-After": "5"} if models.starting() else None)

    @routes.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @routes.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = models.not_ready() is None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @routes.get("/metrics")
    async def metrics() -> Response:
        for server in models.servers.values():
            server.set_queue_depth()
        body, content_type = models.metrics.render()
        return Response(body, media_type=content_type)

    return routes


__all__ = ["OPEN_PATHS", "router"]
