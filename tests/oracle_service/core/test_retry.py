"""Retries: Retry-After honoured but capped, never past the deadline, attempts bounded."""

from __future__ import annotations

import asyncio
import email.utils
import time
from types import SimpleNamespace

import httpx2
import openai
import pytest

from oracle_service.core import retry
from oracle_service.core.retry import (
    CallTimeout,
    InvalidReply,
    RetryPastDeadline,
    retry_after_s,
    wait_before_retry,
    with_retries,
)
from oracle_service.core.settings import Settings


def status_error(status: int, **headers: str) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://judge/v1/chat/completions")
    response = httpx2.Response(status, headers=headers, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3600"}, 3600.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "-5", "retry-after": "2"}, 2.0),  # a negative value is ignored
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_values(headers, expected):
    assert retry_after_s(status_error(429, **headers)) == expected


def test_retry_after_dates_and_the_cap():
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_s(status_error(503, **{"retry-after": later})) <= 30
    settings = Settings(retry_after_max_s=5.0, retry_jitter_s=0.0)
    assert wait_before_retry(status_error(429, **{"retry-after": "3600"}), 1, settings) == 5.0
    assert wait_before_retry(CallTimeout(), 3, settings) == settings.retry_initial_wait_s * 4


def run(calls: list[BaseException | str], deadline_in_s: float, **overrides):
    settings = Settings(retry_max_attempts=4, retry_initial_wait_s=0.01, retry_jitter_s=0.0,
                        **overrides)  # fmt: skip
    made = []

    async def call() -> str:
        outcome = calls[len(made)]
        made.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def go():
        return await with_retries(call, settings, asyncio.get_running_loop().time() + deadline_in_s)

    try:
        return asyncio.run(go()), len(made)
    except Exception as exc:
        return exc, len(made)


def test_retryable_errors_retry_and_the_rest_fail_at_once():
    assert run([status_error(500), CallTimeout(), "ok"], 10) == ("ok", 3)
    error, attempts = run([InvalidReply("not a completion"), "ok"], 10)
    assert isinstance(error, InvalidReply) and attempts == 1
    error, attempts = run([status_error(503)] * 5, 10)
    assert isinstance(error, openai.APIStatusError) and attempts == 4  # retry_max_attempts


def test_no_wait_ends_past_the_deadline(monkeypatch):
    slept = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(retry, "asyncio", SimpleNamespace(get_running_loop=asyncio.get_running_loop,
                                                          sleep=record))
    error, attempts = run([status_error(429, **{"retry-after": "3600"}), "ok"], 5.0)
    assert isinstance(error, RetryPastDeadline) and attempts == 1
    assert error.wait_s == 60.0 and isinstance(error.last, openai.APIStatusError)
    assert slept == []  # it did not sleep at all


def test_waits_honour_retry_after_then_back_off(monkeypatch):
    """The waits tenacity sleeps: Retry-After when sent, else the exponential backoff."""
    from types import SimpleNamespace

    from oracle_service.core import retry

    slept = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(retry, "asyncio", SimpleNamespace(
        get_running_loop=asyncio.get_running_loop, sleep=record))
    calls = [status_error(429, **{"retry-after": "0.25"}), CallTimeout(), CallTimeout(), "ok"]
    assert run(calls, 10) == ("ok", 4)
    assert slept == [0.25, 0.02, 0.04]  # Retry-After, then 0.01 * 2 ** (attempt - 1)
