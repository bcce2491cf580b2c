"""/healthz and /readyz (open), /metrics and /openapi.json (behind auth)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from oracle_service.core.run_metrics import render_run_gauges
from oracle_service.core.store import StoreError

logger = logging.getLogger(__name__)
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
    """Prometheus metrics: the service's counters, and training gauges of the active runs
    (compo_run_*, labelled by run_id; core/run_metrics.py)."""
    text = request.app.state.metrics.render()
    store = getattr(request.app.state, "store", None)
    try:
        if store is not None:
            text += await render_run_gauges(store, request.app.state.settings)
    except StoreError as exc:  # the service's own counters still answer
        logger.warning("/metrics without run gauges: %s", exc)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


@protected_router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
