"""GET /v1/stats and GET /v1/runs/{run_id}/stats, summed from the store's counters.

The counters live in the store (SQLite, or the PostgreSQL shared by every replica), so
the statistics survive restarts and are the same whichever replica answers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from oracle_service.api.deps import INVALID, UNAVAILABLE, StoreDep
from oracle_service.core.stats import run_stats, service_stats
from oracle_service.schemas import API_PREFIX, RUN_ID_PATTERN, ErrorBody, RunStats, ServiceStats

router = APIRouter(prefix=API_PREFIX, tags=["stats"], responses={**INVALID, **UNAVAILABLE})
NOT_FOUND = {404: {"model": ErrorBody, "description": "No comparisons recorded for the run"}}


@router.get("/stats", response_model=ServiceStats)
async def all_stats(store: StoreDep) -> ServiceStats:
    """Totals over every comparison answered, and per run."""
    return service_stats(await store.counters())


@router.get("/runs/{run_id}/stats", response_model=RunStats, responses=NOT_FOUND)
async def one_run_stats(
    store: StoreDep, run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN)]
) -> RunStats:
    """One run's totals and its per-iteration breakdown."""
    stats = run_stats(run_id, await store.counters(run_id))
    if stats is None:
        detail = f"no comparisons recorded for run {run_id!r}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail)
    return stats
