"""LLM-judge backend: any OpenAI-compatible chat endpoint through the openai client.

Every item gets a verdict or its own abstention, whatever the endpoint does: each call is
bounded in time (judge_timeout_s, body included) and size (judge_max_response_bytes; of an
error body or an answer only judge_max_kept_bytes are kept), retries stop at the item's
deadline, and hung calls leave their slots (core/slots.py). An internal error (a bug) is
logged with its traceback, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence
from typing import Any

import openai

from oracle_service.backends.base import Verdict
from oracle_service.backends.judge_http import judge_client
from oracle_service.backends.judge_parsing import (
    content_seeded_swap,
    render_template,
    verdict_from_raw,
)
from oracle_service.backends.judge_reply import ChatReply, parse_body
from oracle_service.core.metrics import ServiceMetrics
from oracle_service.core.ratelimit import RateLimits
from oracle_service.core.retry import (
    CallTimeout,
    InvalidReply,
    RetryPastDeadline,
    classify,
    with_retries,
)
from oracle_service.core.sanitize import register_secrets, safe_message
from oracle_service.core.settings import Settings
from oracle_service.core.slots import CallSlots
from oracle_service.schemas import ComparisonItem, ErrorKind

logger = logging.getLogger(__name__)


def describe(exc: BaseException, settings: Settings) -> str:
    """What went wrong, for the abstention (the caller sanitises and bounds it)."""
    if isinstance(exc, RetryPastDeadline):
        return f"{describe(exc.last, settings)} ({exc})"
    if isinstance(exc, CallTimeout):
        return f"judge call took longer than judge_timeout_s={settings.judge_timeout_s}"
    if isinstance(exc, InvalidReply):
        return str(exc)
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {type(exc).__name__}: {exc.message}"
    if isinstance(exc, openai.APIConnectionError) and exc.__cause__ is not None:
        return f"{type(exc).__name__}: {type(exc.__cause__).__name__}: {exc.__cause__}"
    if isinstance(exc, openai.APIError):
        return f"{type(exc).__name__}: {exc.message}"
    return f"internal error ({type(exc).__name__}); see the service log"


class JudgeBackend:
    """Asks an LLM which response is better, with retries, rate limits and bounded concurrency."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        register_secrets(settings.secret_values())  # an echoed key is redacted, bare or not
        # Several small connection pools: the HTTP client scans its whole pool on every
        # request, so one pool of hundreds of connections costs more CPU than the call.
        pools = math.ceil(settings.judge_max_concurrency / settings.judge_connections_per_pool)
        self._clients = [judge_client(settings) for _ in range(pools)]
        self._next_client = itertools.cycle(self._clients)
        self.slots = CallSlots(
            settings.judge_max_concurrency,
            settings.judge_max_slow_calls,
            settings.judge_slow_call_s,
        )
        self._limits = RateLimits(
            settings.judge_requests_per_minute,
            settings.judge_tokens_per_minute,
            settings.rate_limit_burst_s,
        )
        self.identity = f"judge:{settings.judge_base_url.rstrip('/')}"
        self.cache_params: dict[str, Any] = {
            "model": settings.judge_model,
            "template_version": settings.judge_template_version,
            "output_format": settings.judge_output_format,
            "temperature": settings.judge_temperature,
            "max_tokens": settings.judge_max_tokens,
            "logprobs": settings.judge_logprobs,
            "position_mode": settings.judge_position_mode,
        }

    async def compare(
        self, items: Sequence[ComparisonItem], deadline: float | None = None
    ) -> list[Verdict]:
        """One verdict or abstention per item; `deadline` is event-loop time."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._settings.item_deadline_s
        return list(await asyncio.gather(*(self._judge_by(item, deadline) for item in items)))

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()

    async def check_key(self) -> str | None:
        """Whether the judge rejects our key, without spending tokens: a GET of its model
        list. The rejection (HTTP 401/403) as a safe one-line message; None when the key is
        taken or the endpoint cannot tell (no such route, unreachable: the comparisons say)."""
        try:
            await self._clients[0].models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            return safe_message(describe(exc, self._settings))  # the registered secrets
        except Exception:  # anything else is not a verdict on the key
            return None
        return None

    def _abstain(self, exc: BaseException, **usage: int) -> Verdict:
        """The item's abstention for `exc`; a bug (internal_error) is logged here, once."""
        kind = classify(exc)
        if kind is ErrorKind.INTERNAL_ERROR:
            logger.error("judging one item failed", exc_info=exc)
        return Verdict.abstain(kind, describe(exc, self._settings), **usage)

    async def _judge_by(self, item: ComparisonItem, deadline: float) -> Verdict:
        """The item's verdict, or its abstention; never raises (cancellation aside)."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._judge(item, deadline), timeout=remaining)
        except asyncio.TimeoutError:
            message = f"no verdict within item_deadline_s={self._settings.item_deadline_s}"
            return Verdict.abstain(ErrorKind.DEADLINE_EXCEEDED, message)
        except Exception as exc:  # a bug: logged, and this item alone abstains
            return self._abstain(exc)

    async def _judge(self, item: ComparisonItem, deadline: float) -> Verdict:
        if self._settings.judge_position_mode == "both":
            swaps = [False, True]
        else:
            swaps = [content_seeded_swap(item)]
        outcomes = await asyncio.gather(
            *(self._ask(item, swapped, deadline) for swapped in swaps), return_exceptions=True
        )
        records = [outcome for outcome in outcomes if isinstance(outcome, dict)]
        usage = {
            "prompt_tokens": sum(record["prompt_tokens"] for record in records),
            "completion_tokens": sum(record["completion_tokens"] for record in records),
        }
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                return self._abstain(outcome, **usage)
        verdict = verdict_from_raw({"calls": records}, self._settings.judge_output_format)
        return dataclasses.replace(verdict, **usage)

    async def _ask(self, item: ComparisonItem, swapped: bool, deadline: float) -> dict[str, Any]:
        """One judge call (with retries) showing the pair in the given order."""
        shown = (item.response_a, item.response_b)
        if swapped:
            shown = shown[::-1]
        messages = [
            {"role": "system", "content": self._settings.judge_system_prompt},
            {
                "role": "user",
                "content": render_template(self._settings.prompt_template, item.prompt, *shown),
            },
        ]
        chars = sum(len(message["content"]) for message in messages)
        estimated_tokens = chars / self._settings.chars_per_token + self._settings.judge_max_tokens

        async def attempt() -> ChatReply:
            await self._limits.acquire(estimated_tokens)
            return await self.slots.run(lambda: self._timed_create(messages))

        reply = await with_retries(attempt, self._settings, deadline)
        return reply.record(swapped, self._settings.judge_max_kept_bytes)

    async def _timed_create(self, messages: list[dict[str, str]]) -> ChatReply:
        """One HTTP attempt, cut off after judge_timeout_s however the bytes trickle in."""
        try:
            return await asyncio.wait_for(self._create(messages), self._settings.judge_timeout_s)
        except asyncio.TimeoutError:
            self._count_attempt("error")
            raise CallTimeout() from None

    async def _create(self, messages: list[dict[str, str]]) -> ChatReply:
        """POST /chat/completions through the SDK client (auth, typed errors); the body's
        bytes are parsed here, bounded in depth, and validated strictly (judge_reply.py).

        `client.post` with a ready wire-format body skips the SDK's per-call TypedDict
        transform, which costs ~1 ms of CPU per call and dominates at hundreds of calls/s.
        """
        settings = self._settings
        body: dict[str, Any] = {
            "model": settings.judge_model,
            "messages": messages,
            "temperature": settings.judge_temperature,
            "max_tokens": settings.judge_max_tokens,
        }
        if settings.judge_logprobs:
            body.update(logprobs=True, top_logprobs=settings.judge_top_logprobs)
        if settings.judge_output_format == "json":
            body["response_format"] = {"type": "json_object"}
        client = next(self._next_client)
        try:
            reply = parse_body(await client.post("/chat/completions", body=body, cast_to=bytes))
        except InvalidReply as exc:
            self._count_attempt("error")
            # Without the parser's frames: they hold the reply (up to a MiB) for as long
            # as the error lives, and asyncio's tasks make that a cycle only gc frees.
            raise exc.with_traceback(None) from None
        except Exception:
            self._count_attempt("error")
            raise
        self._count_attempt("ok")
        return reply

    def _count_attempt(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.backend_attempts.labels(outcome=outcome).inc()
