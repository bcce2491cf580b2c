"""/healthz and /readyz (open), /metrics, /openapi.json and /v1/preflight (behind auth).

/readyz also says whether the judge accepts the service's key: the backend's `check_key`
(a GET of the judge's model list, no tokens spent) runs in the background when the last
check is stale, and a rejected key makes the service not ready, with the cause and the fix.
/v1/preflight sends one canary comparison straight to the backend (no cache, no
statistics) and answers its outcome: `compo train` asks it before it loads a model.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from oracle_service.core.run_metrics import render_run_gauges
from oracle_service.core.store import StoreError
from oracle_service.schemas import API_PREFIX, ComparisonItem, ErrorKind, fix_for

logger = logging.getLogger(__name__)
open_router = APIRouter(tags=["health"])
protected_router = APIRouter(tags=["health"])

CANARY = ComparisonItem(prompt="What is 2 + 2?", response_a="4", response_b="5")
KEY_OK_S = 300.0  # an accepted key is trusted this long (readiness probes are frequent)
KEY_RETRY_S = 10.0  # a rejected one is checked again at most this often (/readyz is open)


@dataclass(frozen=True)
class KeyCheck:
    """The outcome of the backend's key check: `problem` None when the key is accepted (or
    the endpoint cannot tell)."""

    problem: str | None
    at: float  # event-loop time


async def check_key(request: Request) -> KeyCheck:
    """Ask the backend whether the judge takes its key (a reward model has no key)."""
    state, loop = request.app.state, asyncio.get_running_loop()
    check = getattr(state.backend, "check_key", None)
    problem = None if check is None else await check()
    state.key_check = KeyCheck(problem, loop.time())
    return state.key_check


def last_key_check(request: Request) -> KeyCheck | None:
    """The last key check; a new one starts in the background when it is stale."""
    state, now = request.app.state, asyncio.get_running_loop().time()
    last: KeyCheck | None = getattr(state, "key_check", None)
    task: asyncio.Task | None = getattr(state, "key_task", None)
    age = KEY_RETRY_S if last is not None and last.problem else KEY_OK_S
    if (last is None or now - last.at > age) and (task is None or task.done()):
        state.key_task = asyncio.ensure_future(check_key(request))
    return last


async def canary(request: Request) -> dict:
    """One comparison straight to the backend, bounded by item_deadline_s: {"ok": true},
    or the abstention's kind, detail and fix."""
    state, loop = request.app.state, asyncio.get_running_loop()
    [verdict] = await state.backend.compare([CANARY], loop.time() + state.settings.item_deadline_s)
    if verdict.error is None:
        return {"ok": True}
    kind = verdict.error.kind.value
    return {"ok": False, "kind": kind, "detail": verdict.error.message, "fix": fix_for(kind)}


@open_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@open_router.get("/readyz", responses={503: {"description": "Not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """The backend is loaded, the database answers, the judge did not reject the key."""
    store = getattr(request.app.state, "store", None)
    if getattr(request.app.state, "service", None) is None or store is None:
        return JSONResponse({"status": "starting"}, status.HTTP_503_SERVICE_UNAVAILABLE)
    try:
        await store.ping()
    except StoreError as exc:
        body = {"status": "database error", "detail": str(exc)}
        return JSONResponse(body, status.HTTP_503_SERVICE_UNAVAILABLE)
    key = last_key_check(request)
    backend = request.app.state.settings.backend
    if key is not None and key.problem is not None:
        body = {"status": "judge rejected the key", "backend": backend, "detail": key.problem,
                "fix": fix_for(ErrorKind.AUTH_ERROR.value)}
        return JSONResponse(body, status.HTTP_503_SERVICE_UNAVAILABLE)
    checked = "pending" if key is None else "accepted"
    return JSONResponse({"status": "ready", "backend": backend, "key": checked})


@protected_router.get(f"{API_PREFIX}/preflight")
async def preflight(request: Request) -> JSONResponse:
    """A canary comparison now (no cache): {"ok": true}, or the kind, detail and fix."""
    if getattr(request.app.state, "backend", None) is None:
        return JSONResponse({"status": "starting"}, status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse({"backend": request.app.state.settings.backend, **await canary(request)})


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
