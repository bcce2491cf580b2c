"""The judge's HTTP client: the openai SDK over a transport that bounds reply bodies.

A 2xx reply longer than `judge_max_response_bytes`, by Content-Length or while streaming,
is cut off with ResponseTooLarge (an InvalidReply: it abstains and is not retried). Of any
other reply (an error) only the first `judge_max_kept_bytes` are read: that is all an error
message needs, and what an item keeps while it waits to retry, so a judge answering with
900 KB error bodies costs a few KiB per item, not megabytes. Replies must come unencoded
(we ask for identity), so the bounds are on what is decoded too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import openai

from oracle_service.core.retry import InvalidReply
from oracle_service.core.settings import Settings

# httpx2's own default pool (the transport given here replaces the SDK's), as in the SDK.
CONNECTION_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
IDENTITY = ("", "identity")


class ResponseTooLarge(InvalidReply):
    """The judge's reply is longer than judge_max_response_bytes."""


def _too_large(limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(f"judge reply longer than judge_max_response_bytes={limit}")


class _BoundedStream(httpx2.AsyncByteStream):
    """At most `limit` bytes of the body: beyond it, ResponseTooLarge, or (`cut`) the end."""

    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, cut: bool) -> None:
        self._inner = inner
        self._limit = limit
        self._cut = cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            if seen + len(chunk) > self._limit:
                if not self._cut:
                    raise _too_large(self._limit)
                yield chunk[: self._limit - seen]
                return  # the rest is never read; closing drops the connection
            seen += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def is_success(status_code: int) -> bool:
    return 200 <= status_code < 300


class BoundedTransport(httpx2.AsyncBaseTransport):
    """Wraps httpx2's transport; refuses encoded or oversized replies, cuts error bodies."""

    def __init__(self, limit: int, kept: int) -> None:
        self._inner = httpx2.AsyncHTTPTransport(limits=CONNECTION_LIMITS)
        self._limit = limit
        self._kept = kept

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in IDENTITY:
            await response.aclose()
            raise InvalidReply(f"judge reply is {encoding}-encoded although identity was asked")
        success = is_success(response.status_code)
        if success and declared.isdigit() and int(declared) > self._limit:
            await response.aclose()
            raise _too_large(self._limit)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        limit = self._limit if success else self._kept
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream, limit, cut=not success),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def judge_client(settings: Settings) -> openai.AsyncOpenAI:
    """One SDK client: auth, base URL, typed status errors; retries are ours (never the SDK's)."""
    return openai.AsyncOpenAI(
        base_url=settings.judge_base_url,
        api_key=settings.judge_key(),
        timeout=settings.judge_timeout_s,
        max_retries=0,
        default_headers={"Accept-Encoding": "identity"},
        http_client=openai.DefaultAsyncHttpxClient(
            transport=BoundedTransport(
                settings.judge_max_response_bytes, settings.judge_max_kept_bytes
            )
        ),
    )
