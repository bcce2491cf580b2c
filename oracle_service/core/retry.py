"""Retries of judge calls on tenacity: which errors retry, how long to wait (Retry-After
honoured, capped), and never a wait that ends past the item's deadline."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from oracle_service.core.settings import Settings
from oracle_service.schemas import ErrorKind

T = TypeVar("T")
RETRYABLE_STATUS = frozenset({408, 409, 429})
MS_PER_S = 1000.0


class CallTimeout(Exception):
    """One HTTP attempt took longer than judge_timeout_s (headers and body together)."""


class InvalidReply(Exception):
    """The judge answered 200 with something that is not a usable chat completion."""


class RetryPastDeadline(Exception):
    """A retryable failure, not retried because the wait would pass the item's deadline."""

    def __init__(self, last: BaseException, wait_s: float) -> None:
        super().__init__(f"not retried: the wait of {wait_s:.1f} s would pass the deadline")
        self.last = last
        self.wait_s = wait_s


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
    if isinstance(exc, CallTimeout | openai.APIConnectionError):  # incl. APITimeoutError
        return True
    status = _status(exc)
    if status is None or is_quota_error(exc):
        return False
    return status in RETRYABLE_STATUS or status >= 500


def classify(exc: BaseException) -> ErrorKind:
    """The error kind an abstention reports for a failed judge call."""
    if isinstance(exc, RetryPastDeadline):
        return classify(exc.last)
    if isinstance(exc, CallTimeout | openai.APITimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        return ErrorKind.CONNECTION_ERROR
    if isinstance(exc, InvalidReply):
        return ErrorKind.INVALID_RESPONSE
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
    if isinstance(exc, openai.APIError):
        return ErrorKind.API_ERROR
    return ErrorKind.INTERNAL_ERROR


def _seconds_until_http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
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
            seconds = float(value) / divisor
        except ValueError:
            seconds = _seconds_until_http_date(value) if name == "retry-after" else None
        if seconds is not None and seconds == seconds and seconds >= 0:  # not NaN or negative
            return seconds
    return None


def wait_before_retry(exc: BaseException, attempt: int, settings: Settings) -> float:
    """Retry-After when the server sent one (capped), else exponential backoff plus jitter."""
    requested = retry_after_s(exc)
    if requested is not None:
        return min(requested, settings.retry_after_max_s)
    backoff = settings.retry_initial_wait_s * 2 ** (attempt - 1)
    return min(backoff, settings.retry_max_wait_s) + random.uniform(0, settings.retry_jitter_s)


def _give_up(settings: Settings) -> Callable[[RetryCallState], NoReturn]:
    """What a stop raises: the last error when attempts ran out, else RetryPastDeadline
    (the next wait would have ended past the item's deadline)."""

    def give_up(state: RetryCallState) -> NoReturn:
        last = state.outcome.exception()
        if state.attempt_number >= settings.retry_max_attempts:
            raise last
        raise RetryPastDeadline(last, state.upcoming_sleep) from last

    return give_up


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)  # looked up at call time (tests may stand in a fake clock)


async def with_retries(call: Callable[[], Awaitable[T]], settings: Settings, deadline: float) -> T:
    """`call()` until it succeeds, fails for good, runs out of attempts, or the next wait
    would end past `deadline` (event-loop time): then the last error is raised.

    tenacity: retry_if_exception(is_retryable) picks the errors, the wait honours
    Retry-After (wait_before_retry), stop_after_attempt | stop_before_delay bound it."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        wait=lambda state: wait_before_retry(
            state.outcome.exception(), state.attempt_number, settings),
        stop=stop_after_attempt(settings.retry_max_attempts)
        | stop_before_delay(deadline - asyncio.get_running_loop().time()),
        sleep=_sleep,
        retry_error_callback=_give_up(settings),
    )
    return await retrying(call)
