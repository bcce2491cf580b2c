"""Comparison backends; `open_backend` picks one from the settings."""

from __future__ import annotations

import asyncio

from oracle_service.backends.base import Backend, Verdict
from oracle_service.core.metrics import ServiceMetrics
from oracle_service.core.settings import Settings

__all__ = ["Backend", "Verdict", "open_backend"]


async def open_backend(settings: Settings, metrics: ServiceMetrics | None = None) -> Backend:
    """Build the configured backend; model loading runs in a thread."""
    if settings.backend == "reward_model":
        from oracle_service.backends.reward_model import (
            RewardModelBackend,  # torch only when needed
        )

        return await asyncio.to_thread(RewardModelBackend, settings, metrics)
    from oracle_service.backends.judge import JudgeBackend

    return JudgeBackend(settings, metrics)
