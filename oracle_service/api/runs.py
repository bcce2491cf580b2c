"""GET /v1/runs, POST /v1/runs/{run_id}/status and POST/GET /v1/runs/{run_id}/iterations: the
coordinator's run status and per-iteration summaries, bounded: MAX_SUMMARY_BYTES of JSON
(413), MAX_SUMMARY_FIELDS fields (422)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from oracle_service.api.deps import INVALID, UNAVAILABLE, StoreDep, json_body, parse_body
from oracle_service.api.middleware import HTTP_413_TOO_LARGE
from oracle_service.schemas import (
    API_PREFIX,
    MAX_SUMMARY_BYTES,
    RUN_ID_PATTERN,
    ErrorBody,
    IterationList,
    IterationSummary,
    RunInfo,
    RunList,
    RunStatus,
)

SUMMARY_ERRORS = {
    409: {"model": ErrorBody, "description": "n_minus exceeds m: the summary contradicts itself"},
    413: {"model": ErrorBody, "description": "The body exceeds MAX_SUMMARY_BYTES"},
}
router = APIRouter(prefix=API_PREFIX, tags=["runs"], responses={**INVALID, **UNAVAILABLE})
RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="Training run id.")]


@router.post(
    "/runs/{run_id}/iterations",
    response_model=IterationSummary,
    status_code=status.HTTP_201_CREATED,
    responses=SUMMARY_ERRORS,
    openapi_extra=json_body(IterationSummary),
)
async def report_iteration(request: Request, run_id: RunId, store: StoreDep) -> IterationSummary:
    """Store an iteration summary (re-posting an iteration replaces it)."""
    body = await request.body()
    if len(body) > MAX_SUMMARY_BYTES:
        raise HTTPException(
            HTTP_413_TOO_LARGE,
            f"iteration summary of {len(body)} bytes exceeds MAX_SUMMARY_BYTES="
            f"{MAX_SUMMARY_BYTES}; post fewer or shorter extra fields",
        )
    summary = parse_body(IterationSummary, body)
    if (problem := summary.contradiction()) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, problem)
    await store.put_iteration(run_id, summary.iteration, summary.model_dump(mode="json"))
    return summary


@router.post(
    "/runs/{run_id}/status",
    response_model=RunStatus,
    openapi_extra=json_body(RunStatus),
)
async def report_status(request: Request, run_id: RunId, store: StoreDep) -> RunStatus:
    """Store the run's state: running (with its iterations in all) or how it ended."""
    status_ = parse_body(RunStatus, await request.body())
    await store.put_run_status(run_id, status_.model_dump(mode="json"))
    return status_


@router.get("/runs/{run_id}/iterations", response_model=IterationList)
async def list_iterations(run_id: RunId, store: StoreDep) -> IterationList:
    """All summaries of a run, by iteration (empty for an unknown run)."""
    rows = await store.list_iterations(run_id)  # validated when posted (maybe to older bounds)
    summaries = [IterationSummary.model_construct(**row) for row in rows]
    return IterationList(run_id=run_id, iterations=summaries)


@router.get("/runs", response_model=RunList)
async def list_runs(store: StoreDep) -> RunList:
    """Runs that posted iteration summaries, the most recently updated first."""
    return RunList(runs=[RunInfo(**row) for row in await store.list_runs()])
