"""Client of the oracle service (httpx + pydantic only: safe to import from a training loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from oracle_service.schemas import (
    API_PREFIX,
    ComparisonItem,
    ComparisonRequest,
    ComparisonResponse,
    ComparisonResult,
    IterationList,
    IterationSummary,
    RunBudget,
    RunStats,
    RunStatus,
    ServiceLimits,
    ServiceStats,
)

DEFAULT_TIMEOUT_S = 300.0  # a batch waits for the slowest judge call and its retries
DEFAULT_MAX_CONCURRENCY = 8  # batches of one compare() call in flight at once
DEFAULT_CONNECT_RETRIES = 3  # httpx retries of failed connection attempts

ItemLike = ComparisonItem | Mapping[str, Any]
SummaryLike = IterationSummary | Mapping[str, Any]


class OracleServiceError(RuntimeError):
    """The service answered with an HTTP error."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"oracle service HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class OracleClient:
    """Async client; one pooled connection set per instance. Use `async with` or `aclose()`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        batch_size: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        budget: RunBudget | None = None,
    ) -> None:
        """`budget`: the run's own judge budget, sent with every comparisons request."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=timeout_s,
            transport=transport or httpx.AsyncHTTPTransport(retries=DEFAULT_CONNECT_RETRIES),
        )
        self._max_concurrency = max_concurrency
        self._batch_size = batch_size
        self._budget = budget

    async def __aenter__(self) -> OracleClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise OracleServiceError(response.status_code, detail)
        return response.json()

    async def limits(self) -> ServiceLimits:
        return ServiceLimits(**await self._request("GET", f"{API_PREFIX}/limits"))

    async def preflight(self) -> dict[str, Any]:
        """One canary comparison on the service's backend now (no cache): {"ok": true}, or
        the abstention's kind, detail and fix."""
        return await self._request("GET", f"{API_PREFIX}/preflight")

    async def compare(self, items: Sequence[ItemLike]) -> list[ComparisonResult]:
        """Results in item order; splits into batches of the server's max batch size."""
        parsed = [ComparisonItem.model_validate(item) for item in items]
        if not parsed:
            return []
        if self._batch_size is None:
            self._batch_size = (await self.limits()).max_batch_size
        size = self._batch_size
        batches = [parsed[start : start + size] for start in range(0, len(parsed), size)]
        semaphore = asyncio.Semaphore(self._max_concurrency)

        async def send(batch: list[ComparisonItem]) -> list[ComparisonResult]:
            request = ComparisonRequest(items=batch, budget=self._budget)
            body = request.model_dump(mode="json", exclude_none=True)
            async with semaphore:
                data = await self._request("POST", f"{API_PREFIX}/comparisons", json=body)
            results = ComparisonResponse(**data).results
            if len(results) != len(batch):
                raise OracleServiceError(200, f"{len(batch)} items, {len(results)} results")
            return results

        answered = await asyncio.gather(*(send(batch) for batch in batches))
        return [result for batch_results in answered for result in batch_results]

    async def report_iteration(self, run_id: str, summary: SummaryLike) -> IterationSummary:
        """Store the coordinator's summary of one iteration (idempotent per iteration)."""
        body = IterationSummary.model_validate(summary).model_dump(mode="json")
        data = await self._request("POST", f"{API_PREFIX}/runs/{run_id}/iterations", json=body)
        return IterationSummary(**data)

    async def report_status(self, run_id: str, status: RunStatus) -> RunStatus:
        """Tell the service the run's state (running, or how it ended)."""
        body = status.model_dump(mode="json")
        data = await self._request("POST", f"{API_PREFIX}/runs/{run_id}/status", json=body)
        return RunStatus(**data)

    async def iterations(self, run_id: str) -> list[IterationSummary]:
        data = await self._request("GET", f"{API_PREFIX}/runs/{run_id}/iterations")
        return IterationList(**data).iterations

    async def stats(self, run_id: str | None = None) -> RunStats | ServiceStats:
        """One run's stats (with per-iteration breakdown), or the service totals."""
        if run_id is None:
            return ServiceStats(**await self._request("GET", f"{API_PREFIX}/stats"))
        return RunStats(**await self._request("GET", f"{API_PREFIX}/runs/{run_id}/stats"))


class SyncOracleClient:
    """Blocking wrapper for synchronous training loops (not for use inside an event loop)."""

    def __init__(self, base_url: str, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = OracleClient(base_url, token, **options)

    def __enter__(self) -> SyncOracleClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()

    def compare(self, items: Sequence[ItemLike]) -> list[ComparisonResult]:
        return self._loop.run_until_complete(self._client.compare(items))

    def preflight(self) -> dict[str, Any]:
        return self._loop.run_until_complete(self._client.preflight())

    def report_iteration(self, run_id: str, summary: SummaryLike) -> IterationSummary:
        return self._loop.run_until_complete(self._client.report_iteration(run_id, summary))

    def report_status(self, run_id: str, status: RunStatus) -> RunStatus:
        return self._loop.run_until_complete(self._client.report_status(run_id, status))

    def limits(self) -> ServiceLimits:
        return self._loop.run_until_complete(self._client.limits())

    def iterations(self, run_id: str) -> list[IterationSummary]:
        return self._loop.run_until_complete(self._client.iterations(run_id))

    def stats(self, run_id: str | None = None) -> RunStats | ServiceStats:
        return self._loop.run_until_complete(self._client.stats(run_id))
