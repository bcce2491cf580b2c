"""POST /v1/comparisons and GET /v1/limits."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError

from oracle_service.api.deps import (
    INVALID,
    TOO_LARGE,
    UNAVAILABLE,
    ServiceDep,
    SettingsDep,
    StoreDep,
    json_body,
    parse_body,
)
from oracle_service.api.middleware import HTTP_499_CLIENT_GONE
from oracle_service.core.budget import calls_per_comparison, template_chars
from oracle_service.schemas import (
    API_PREFIX,
    ComparisonRequest,
    ComparisonResponse,
    ErrorBody,
    ServiceLimits,
)

T = TypeVar("T")
router = APIRouter(prefix=API_PREFIX, tags=["comparisons"])
_PROMPT_KEY = re.compile(rb'"prompt"\s*:')
# The body is parsed here, not by FastAPI (straight from bytes to the model, without a tree
# of Python objects in between), so its schema is declared by hand.
REQUEST_BODY = json_body(ComparisonRequest)


def items_at_least(body: bytes) -> int:
    """A lower bound on a comparisons body's items, without parsing it.

    Each item has one "prompt" key, and a quote inside a JSON string is always escaped, so
    `"prompt":` occurs once per item; an escaped spelling of the key is missed (the exact
    count after parsing still applies). Only an invalid body can repeat the key.
    """
    return len(_PROMPT_KEY.findall(body))


def too_many(count: int, limit: int) -> RequestValidationError:
    """422: the batch breaks the schema's maxItems (max_batch_size)."""
    message = (f"batch of {count} items exceeds max_batch_size={limit}; split it "
               f"(see GET {API_PREFIX}/limits)")  # fmt: skip
    return RequestValidationError([{"loc": ("body", "items"), "msg": message, "type": "too_long"}])


UNPRICED = ("budget: this service has no judge prices (judge_input_usd_per_mtok, "
            "judge_output_usd_per_mtok, backend judge), so it cannot hold a run to a budget; "
            "set them on the service, or remove oracle.budget_usd from the run")
BUDGET_CONFLICT = {409: {"model": ErrorBody, "description": "A run budget, but the service "
                         "has no judge prices"}}


async def _until_disconnect(request: Request) -> None:
    """Returns once the client has gone away (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result; None if the client went away first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # the client is gone, or this request is being cancelled
        await asyncio.gather(task, watcher, return_exceptions=True)
    return None if task.cancelled() else task.result()


@router.post(
    "/comparisons",
    response_model=ComparisonResponse,
    responses={**TOO_LARGE, **INVALID, **BUDGET_CONFLICT, **UNAVAILABLE},
    openapi_extra=REQUEST_BODY,
)
async def compare(
    request: Request, settings: SettingsDep, service: ServiceDep
) -> ComparisonResponse | Response:
    """Compare each item's two responses; results come back in request order.

    Every item gets a verdict or an abstention with its error; a request whose client goes
    away is cancelled with its judge calls (and nothing is counted: nothing was answered).
    """
    arrived = asyncio.get_running_loop().time()
    body = await request.body()
    if (count := items_at_least(body)) > settings.max_batch_size:
        raise too_many(count, settings.max_batch_size)
    parsed = parse_body(ComparisonRequest, body)
    if len(parsed.items) > settings.max_batch_size:
        raise too_many(len(parsed.items), settings.max_batch_size)
    if parsed.budget is not None and not settings.priced:  # valid, but not here: 409
        raise HTTPException(status.HTTP_409_CONFLICT, UNPRICED)
    work = service.compare(parsed.items, arrived, parsed.budget)
    results = await cancel_on_disconnect(request, work)
    if results is None:
        return Response(status_code=HTTP_499_CLIENT_GONE)
    return ComparisonResponse(results=results)


@router.get("/limits", response_model=ServiceLimits, responses=UNAVAILABLE)
async def limits(settings: SettingsDep, store: StoreDep) -> ServiceLimits:
    """Batch and body limits, so clients can split their work; what a judge call is made
    of and costs, so a run can estimate its cost (`compo probe`)."""
    priced = settings.priced
    return ServiceLimits(
        max_batch_size=settings.max_batch_size,
        max_body_bytes=settings.max_body_bytes,
        backend=settings.backend,
        calls_per_comparison=calls_per_comparison(settings),
        template_chars=template_chars(settings),
        chars_per_token=settings.chars_per_token,
        max_completion_tokens=settings.judge_max_tokens,
        input_usd_per_mtok=settings.judge_input_usd_per_mtok if priced else None,
        output_usd_per_mtok=settings.judge_output_usd_per_mtok if priced else None,
        budget_usd=settings.budget_usd,
        spent_usd=await store.spent_usd(None) if priced else None,
    )
