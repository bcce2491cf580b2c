"""The shared store: PostgreSQL through an asyncpg pool, for several replicas of one service."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from oracle_service.core.sanitize import safe_message
from oracle_service.core.store import (
    LAST_SUMMARY,
    RUN_LIST_KEYS,
    RUN_LIST_QUERY,
    RUN_TOTALS,
    SESSION_EPOCH,
    CachedVerdict,
    CounterKey,
    CounterRow,
    StoreError,
    cached_verdict,
    counter_rows,
    redacted_url,
    spent_query,
    status_row,
    table_definitions,
    verdict_row,
)

T = TypeVar("T")
# Replicas starting at once must not race on CREATE TABLE: one transaction-level lock.
_SCHEMA_LOCK_ID = 0x0C0A1E5E
_INSERT_VERDICT = (
    "INSERT INTO verdicts VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING"
)
_ADD_COUNTER = (
    "INSERT INTO vote_counters VALUES ($1, $2, $3, $4) ON CONFLICT (run_id, iteration, name) "
    "DO UPDATE SET value = vote_counters.value + excluded.value"
)
_PUT_ITERATION = (
    "INSERT INTO iterations VALUES ($1, $2, $3, $4) ON CONFLICT (run_id, iteration) "
    "DO UPDATE SET summary = excluded.summary, received_at = excluded.received_at"
)
_PUT_STATUS = (
    "INSERT INTO run_status VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO UPDATE SET "
    "state = excluded.state, message = excluded.message, updated_at = excluded.updated_at, "
    "iterations_total = COALESCE(excluded.iterations_total, run_status.iterations_total)"
)
_COUNTERS = "SELECT run_id, iteration, name, value FROM vote_counters"
_NEXT_EPOCH = (
    "INSERT INTO service_state VALUES ($1, 1) ON CONFLICT (name) "
    "DO UPDATE SET value = service_state.value + 1 RETURNING value"
)
# What a lost or refused connection raises: the driver's, the socket's, a timeout.
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresStore:
    """A connection pool; every statement is bounded by `timeout_s`."""

    def __init__(self, url: str, pool_size: int, timeout_s: float) -> None:
        self._url = url
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self.description = redacted_url(url)

    async def _guard(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except _FAILURES as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise StoreError(safe_message(f"{self.description}: {reason}", [self._url])) from exc

    async def _with_connection(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreError(f"{self.description}: store is not open")
        pool = self._pool

        async def run() -> T:
            async with pool.acquire(timeout=self._timeout_s) as connection:
                return await work(connection)

        return await self._guard(run())

    async def open(self) -> None:
        self._pool = await self._guard(
            asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._timeout_s,
                command_timeout=self._timeout_s,
            )
        )
        await self._with_connection(self._create_tables)

    @staticmethod
    async def _create_tables(connection: asyncpg.Connection) -> None:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_ID)
            for statement in table_definitions("BIGINT", "DOUBLE PRECISION"):
                await connection.execute(statement)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._guard(pool.close())

    async def ping(self) -> None:
        await self._with_connection(lambda connection: connection.fetchval("SELECT 1"))

    async def get_verdicts(self, keys: list[str]) -> dict[str, CachedVerdict]:
        if not keys:
            return {}
        rows = await self._with_connection(
            lambda connection: connection.fetch(
                "SELECT key, label, probability, position_inconsistent, raw FROM verdicts "
                "WHERE key = ANY($1::text[])",
                keys,
            )
        )
        return {row[0]: cached_verdict(*row[1:]) for row in rows}

    async def record(
        self, verdicts: dict[str, CachedVerdict], counters: dict[CounterKey, float]
    ) -> None:
        now = time.time()
        rows = [verdict_row(key, verdicts[key], now) for key in sorted(verdicts)]
        added = counter_rows(counters)
        if not rows and not added:
            return

        async def write(connection: asyncpg.Connection) -> None:
            async with connection.transaction():
                if rows:
                    await connection.executemany(_INSERT_VERDICT, rows)
                if added:
                    await connection.executemany(_ADD_COUNTER, added)

        await self._with_connection(write)

    async def put_iteration(self, run_id: str, iteration: int, summary: dict[str, Any]) -> None:
        row = (run_id, iteration, json.dumps(summary), time.time())
        await self._with_connection(lambda connection: connection.execute(_PUT_ITERATION, *row))

    async def list_iterations(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._with_connection(
            lambda connection: connection.fetch(
                "SELECT summary FROM iterations WHERE run_id = $1 ORDER BY iteration", run_id
            )
        )
        return [json.loads(row[0]) for row in rows]

    async def list_runs(self) -> list[dict[str, Any]]:
        rows = await self._with_connection(lambda connection: connection.fetch(RUN_LIST_QUERY))
        return [dict(zip(RUN_LIST_KEYS, tuple(row), strict=True)) for row in rows]

    async def put_run_status(self, run_id: str, status: dict[str, Any]) -> None:
        row = status_row(run_id, status, time.time())
        await self._with_connection(lambda connection: connection.execute(_PUT_STATUS, *row))

    async def spent_usd(self, run_id: str | None) -> float:
        query, args = spent_query(run_id, ("$1", "$2", "$3"))
        value = await self._with_connection(lambda connection: connection.fetchval(query, *args))
        return float(value)

    async def run_totals(self, run_id: str) -> dict[str, float]:
        query = RUN_TOTALS.format("$1")
        rows = await self._with_connection(lambda connection: connection.fetch(query, run_id))
        return {row[0]: float(row[1]) for row in rows}

    async def last_summary(self, run_id: str) -> dict[str, Any] | None:
        query = LAST_SUMMARY.format("$1")
        value = await self._with_connection(
            lambda connection: connection.fetchval(query, run_id))
        return None if value is None else json.loads(value)

    async def counters(self, run_id: str | None = None) -> list[CounterRow]:
        if run_id is None:
            rows = await self._with_connection(lambda connection: connection.fetch(_COUNTERS))
        else:
            rows = await self._with_connection(
                lambda connection: connection.fetch(f"{_COUNTERS} WHERE run_id = $1", run_id)
            )
        return [tuple(row) for row in rows]

    async def session_epoch(self) -> int:
        value = await self._with_connection(
            lambda connection: connection.fetchval(
                "SELECT value FROM service_state WHERE name = $1", SESSION_EPOCH
            )
        )
        return 0 if value is None else value

    async def end_sessions(self) -> int:
        return await self._with_connection(
            lambda connection: connection.fetchval(_NEXT_EPOCH, SESSION_EPOCH)
        )
