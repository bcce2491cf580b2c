"""LLM-judge backend: any OpenAI-compatible chat endpoint through the openai client."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion import Choice

from oracle_service.backends.base import Verdict
from oracle_service.backends.judge_parsing import (
    content_seeded_swap,
    render_template,
    verdict_from_raw,
)
from oracle_service.core.metrics import ServiceMetrics
from oracle_service.core.ratelimit import RateLimits
from oracle_service.core.retry import classify, judge_retrying
from oracle_service.core.settings import Settings
from oracle_service.schemas import ComparisonItem


def _first_token_logprobs(choice: Choice) -> dict[str, float] | None:
    """{token (stripped): best logprob} over the first generated token's alternatives."""
    if choice.logprobs is None or not choice.logprobs.content:
        return None
    first = choice.logprobs.content[0]
    top: dict[str, float] = {}
    for alternative in [first, *first.top_logprobs]:
        token = alternative.token.strip()
        top[token] = max(top.get(token, alternative.logprob), alternative.logprob)
    return top


def describe(exc: openai.APIError) -> str:
    status = getattr(exc, "status_code", None)
    prefix = f"HTTP {status}: " if status is not None else ""
    return f"{prefix}{type(exc).__name__}: {exc.message}"


class JudgeBackend:
    """Asks an LLM which response is better, with retries, rate limits and bounded concurrency."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        # Several small connection pools: the HTTP client scans its whole pool on every
        # request, so one pool of hundreds of connections costs more CPU than the call.
        pools = math.ceil(settings.judge_max_concurrency / settings.judge_connections_per_pool)
        self._clients = [
            openai.AsyncOpenAI(
                base_url=settings.judge_base_url,
                api_key=settings.judge_api_key.get_secret_value() or None,
                timeout=settings.judge_timeout_s,
                max_retries=0,  # tenacity owns retries, so attempts never multiply
            )
            for _ in range(pools)
        ]
        self._next_client = itertools.cycle(self._clients)
        self._semaphore = asyncio.Semaphore(settings.judge_max_concurrency)
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

    async def compare(self, items: Sequence[ComparisonItem]) -> list[Verdict]:
        return list(await asyncio.gather(*(self._judge(item) for item in items)))

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()

    async def _judge(self, item: ComparisonItem) -> Verdict:
        if self._settings.judge_position_mode == "both":
            swaps = [False, True]
        else:
            swaps = [content_seeded_swap(item)]
        outcomes = await asyncio.gather(
            *(self._ask(item, swapped) for swapped in swaps), return_exceptions=True
        )
        records = [outcome for outcome in outcomes if isinstance(outcome, dict)]
        usage = {
            "prompt_tokens": sum(record["prompt_tokens"] for record in records),
            "completion_tokens": sum(record["completion_tokens"] for record in records),
        }
        for outcome in outcomes:
            if isinstance(outcome, openai.APIError):
                return Verdict.abstain(classify(outcome), describe(outcome), **usage)
            if isinstance(outcome, BaseException):
                raise outcome
        verdict = verdict_from_raw({"calls": records}, self._settings.judge_output_format)
        return dataclasses.replace(verdict, **usage)

    async def _ask(self, item: ComparisonItem, swapped: bool) -> dict[str, Any]:
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
        async for attempt in judge_retrying(self._settings):
            with attempt:
                await self._limits.acquire(estimated_tokens)
                async with self._semaphore:
                    completion = await self._create(messages)
        return self._record(completion, swapped)

    async def _create(self, messages: list[dict[str, str]]) -> ChatCompletion:
        """POST /chat/completions through the SDK client (auth, timeout, typed errors).

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
        try:
            completion = await next(self._next_client).post(
                "/chat/completions", body=body, cast_to=ChatCompletion
            )
        except openai.APIError:
            self._count_attempt("error")
            raise
        self._count_attempt("ok")
        return completion

    def _count_attempt(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.backend_attempts.labels(outcome=outcome).inc()

    @staticmethod
    def _record(completion: ChatCompletion, swapped: bool) -> dict[str, Any]:
        """The raw, re-parsable record of one call."""
        choice = completion.choices[0] if completion.choices else None
        usage = completion.usage
        return {
            "swapped": swapped,
            "content": choice.message.content if choice is not None else None,
            "top_logprobs": _first_token_logprobs(choice) if choice is not None else None,
            "prompt_tokens": usage.prompt_tokens if usage is not None else 0,
            "completion_tokens": usage.completion_tokens if usage is not None else 0,
        }
