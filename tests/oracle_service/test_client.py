"""The async client and its sync wrapper against a running service."""

from __future__ import annotations

import asyncio

import pytest

from oracle_service.client import OracleClient, OracleServiceError, SyncOracleClient
from oracle_service.schemas import RunStats, ServiceStats


def items(n: int) -> list[dict]:
    return [
        {
            "prompt": f"p{i}",
            "response_a": "x" * (i % 3 + 1),
            "response_b": "yy",
            "run_id": "client-run",
            "iteration": 0,
            "perturbation": i,
        }
        for i in range(n)
    ]


def test_async_client_splits_batches_and_keeps_order(make_settings, running_service, api_token):
    with running_service(make_settings(max_batch_size=3)) as http:
        base_url = str(http.base_url)

        async def go():
            async with OracleClient(base_url, api_token) as client:
                return await client.compare(items(10)), await client.stats("client-run")

        results, stats = asyncio.run(go())
    assert [r.perturbation for r in results] == list(range(10))  # 4 requests of <= 3 items
    expected = {1: "b", 2: "tie", 3: "a"}
    assert [r.verdict.value for r in results] == [expected[i % 3 + 1] for i in range(10)]
    assert isinstance(stats, RunStats) and stats.comparisons == 10


def test_sync_client_reports_iterations_and_reads_stats(make_settings, running_service, api_token):
    with running_service(make_settings()) as http:
        with SyncOracleClient(str(http.base_url), api_token) as client:
            [result] = client.compare(items(1))
            stored = client.report_iteration(
                "client-run",
                {
                    "iteration": 0,
                    "m": 8,
                    "n_minus": 5,
                    "accepted": True,
                    "step": 0.02,
                    "wall_s": 1.5,
                },
            )
            listed = client.iterations("client-run")
            totals = client.stats()
    assert result.verdict.value == "b"
    assert stored.model_extra == {"wall_s": 1.5}
    assert [s.n_minus for s in listed] == [5]
    assert isinstance(totals, ServiceStats) and totals.runs["client-run"].comparisons == 1


def test_client_raises_on_http_errors(make_settings, running_service):
    with running_service(make_settings()) as http:
        with SyncOracleClient(str(http.base_url), "wrong-token") as client:
            with pytest.raises(OracleServiceError) as caught:
                client.stats()
    assert caught.value.status_code == 401
