"""/healthz and /readyz (open), /metrics and /openapi.json (behind auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from oracle_service.core.store import StoreError

open_router = APIRouter(tags=["health"])
protected_router = APIRouter(tags=["health"])


@open_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@open_router.get("/readyz", responses={503: {"description": "Not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """The backend is loaded and the database answers."""
    store = getattr(request.app.state, "store", None)
    if getattr(request.app.state, "service", None) is None or store is None:
        return JSONResponse({"status": "starting"}, status.HTTP_503_SERVICE_UNAVAILABLE)
    try:
        await store.ping()
    except StoreError as exc:
        body = {"status": "database error", "detail": str(exc)}
        return JSONResponse(body, status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse({"status": "ready", "backend": request.app.state.settings.backend})


PROMETHEUS_TEXT = {200: {"description": "Prometheus text format", "content": {"text/plain": {}}}}


@protected_router.get("/metrics", response_class=Response, responses=PROMETHEUS_TEXT)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@protected_router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
