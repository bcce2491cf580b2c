"""Retry policy for judge calls: which errors retry, how long to wait (Retry-After first)."""

from __future__ import annotations

import email.utils
import time

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from oracle_service.core.settings import Settings
from oracle_service.schemas import ErrorKind

RETRYABLE_STATUS = frozenset({408, 409, 429})
MS_PER_S = 1000.0


def _status(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


def is_quota_error(exc: BaseException) -> bool:
    """429 'insufficient_quota' means billing, not load: waiting will not help."""
    return isinstance(exc, openai.APIStatusError) and "insufficient_quota" in (
        exc.code,
        exc.type,
    )


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection errors, 408/409/429 (not quota) and 5xx retry; the rest fail fast."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = _status(exc)
    if status is None or is_quota_error(exc):
        return False
    return status in RETRYABLE_STATUS or status >= 500


def classify(exc: openai.APIError) -> ErrorKind:
    """The error kind an abstention reports for a failed judge call."""
    if isinstance(exc, openai.APITimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        return ErrorKind.CONNECTION_ERROR
    status = _status(exc)
    if is_quota_error(exc):
        return ErrorKind.INSUFFICIENT_QUOTA
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ErrorKind.AUTH_ERROR
    if status == 400:
        return ErrorKind.BAD_REQUEST
    if status is not None and status >= 500:
        return ErrorKind.SERVER_ERROR
    return ErrorKind.API_ERROR


def _seconds_until_http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, Retry-After seconds or date)."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    for name, divisor in (("retry-after-ms", MS_PER_S), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            if name == "retry-after":
                return _seconds_until_http_date(value)
    return None


class WaitRetryAfter(wait_base):
    """Use the server's Retry-After when present (capped); otherwise the fallback wait."""

    def __init__(self, fallback: wait_base, max_s: float) -> None:
        self._fallback = fallback
        self._max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        requested = retry_after_s(outcome.exception() if outcome is not None else None)
        if requested is not None:
            return min(requested, self._max_s)
        return self._fallback(retry_state)


def judge_retrying(settings: Settings) -> AsyncRetrying:
    """A fresh tenacity controller for one judge call; the last error is re-raised."""
    backoff = wait_exponential(
        multiplier=settings.retry_initial_wait_s, max=settings.retry_max_wait_s
    ) + wait_random(0, settings.retry_jitter_s)
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        wait=WaitRetryAfter(backoff, settings.retry_after_max_s),
        stop=stop_after_attempt(settings.retry_max_attempts),
        reraise=True,
    )
