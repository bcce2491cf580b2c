"""Comparison backends; `open_backend` picks one from the settings."""

from __future__ import annotations

import asyncio

from ..metrics import ServiceMetrics
from ..settings import Settings
from .base import Backend, Verdict

__all__ = ["Backend", "Verdict", "open_backend"]


async def open_backend(settings: Settings, metrics: ServiceMetrics | None = None) -> Backend:
    """Build the configured backend; model loading runs in a thread."""
    if settings.backend == "reward_model":
        from .reward_model import RewardModelBackend  # torch only when needed

        return await asyncio.to_thread(RewardModelBackend, settings, metrics)
    from .judge import JudgeBackend

    return JudgeBackend(settings, metrics)
