"""POST /v1/comparisons and GET /v1/limits."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from oracle_service.api.deps import ServiceDep, SettingsDep
from oracle_service.api.middleware import HTTP_413_TOO_LARGE
from oracle_service.schemas import API_PREFIX, ComparisonRequest, ComparisonResponse, ServiceLimits

router = APIRouter(prefix=API_PREFIX, tags=["comparisons"])


@router.post(
    "/comparisons",
    response_model=ComparisonResponse,
    responses={413: {"description": "Batch or body larger than the limits"}},
)
async def compare(
    request: ComparisonRequest, settings: SettingsDep, service: ServiceDep
) -> ComparisonResponse:
    """Compare each item's two responses; results come back in request order."""
    if len(request.items) > settings.max_batch_size:
        raise HTTPException(
            HTTP_413_TOO_LARGE,
            f"batch of {len(request.items)} items exceeds max_batch_size="
            f"{settings.max_batch_size}; split it (see GET {API_PREFIX}/limits)",
        )
    return ComparisonResponse(results=await service.compare(request.items))


@router.get("/limits", response_model=ServiceLimits)
async def limits(settings: SettingsDep) -> ServiceLimits:
    """Batch and body limits, so clients can split their work."""
    return ServiceLimits(
        max_batch_size=settings.max_batch_size,
        max_body_bytes=settings.max_body_bytes,
        backend=settings.backend,
    )
