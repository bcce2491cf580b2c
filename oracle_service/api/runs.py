"""GET /v1/runs and POST/GET /v1/runs/{run_id}/iterations: the coordinator's per-iteration
summaries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from oracle_service.api.deps import INVALID, UNAVAILABLE, StoreDep
from oracle_service.schemas import (
    API_PREFIX,
    RUN_ID_PATTERN,
    ErrorBody,
    IterationList,
    IterationSummary,
    RunInfo,
    RunList,
)

NOT_JSON = {400: {"model": ErrorBody, "description": "The body is not UTF-8 JSON"}}
router = APIRouter(prefix=API_PREFIX, tags=["runs"], responses={**INVALID, **UNAVAILABLE})
RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="Training run id.")]


@router.post(
    "/runs/{run_id}/iterations",
    response_model=IterationSummary,
    status_code=status.HTTP_201_CREATED,
    responses=NOT_JSON,
)
async def report_iteration(
    summary: IterationSummary, run_id: RunId, store: StoreDep
) -> IterationSummary:
    """Store an iteration summary (re-posting an iteration replaces it)."""
    await store.put_iteration(run_id, summary.iteration, summary.model_dump(mode="json"))
    return summary


@router.get("/runs/{run_id}/iterations", response_model=IterationList)
async def list_iterations(run_id: RunId, store: StoreDep) -> IterationList:
    """All summaries of a run, by iteration (empty for an unknown run)."""
    rows = await store.list_iterations(run_id)
    return IterationList(run_id=run_id, iterations=[IterationSummary(**row) for row in rows])


@router.get("/runs", response_model=RunList)
async def list_runs(store: StoreDep) -> RunList:
    """Runs that posted iteration summaries, the most recently updated first."""
    return RunList(runs=[RunInfo(**row) for row in await store.list_runs()])
