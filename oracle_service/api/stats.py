"""GET /v1/stats and GET /v1/runs/{run_id}/stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from oracle_service.schemas import API_PREFIX, RUN_ID_PATTERN, RunStats, ServiceStats

router = APIRouter(prefix=API_PREFIX, tags=["stats"])


@router.get("/stats", response_model=ServiceStats)
async def service_stats(request: Request) -> ServiceStats:
    """Totals since the service started, and per run."""
    return request.app.state.stats.service_stats()


@router.get("/runs/{run_id}/stats", response_model=RunStats, responses={404: {}})
async def run_stats(
    request: Request, run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN)]
) -> RunStats:
    """One run's totals and its per-iteration breakdown."""
    stats = request.app.state.stats.run_stats(run_id)
    if stats is None:
        detail = f"no comparisons recorded for run {run_id!r}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail)
    return stats
