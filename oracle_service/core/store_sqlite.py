"""The embedded store: one SQLite file (WAL), one connection owned by one worker thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    spent_query,
    status_row,
    table_definitions,
    verdict_row,
)

T = TypeVar("T")

# SQLite caps the number of host parameters per statement; stay well below it.
_KEYS_PER_QUERY = 500
_INSERT_VERDICT = "INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
_ADD_COUNTER = (
    "INSERT INTO vote_counters VALUES (?, ?, ?, ?) ON CONFLICT (run_id, iteration, name) "
    "DO UPDATE SET value = vote_counters.value + excluded.value"
)
_PUT_STATUS = (
    "INSERT INTO run_status VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
    "state = excluded.state, message = excluded.message, updated_at = excluded.updated_at, "
    "iterations_total = COALESCE(excluded.iterations_total, run_status.iterations_total)"
)
_NEXT_EPOCH = (  # no RETURNING: SQLite before 3.35 lacks it
    "INSERT INTO service_state VALUES (?, 1) ON CONFLICT (name) "
    "DO UPDATE SET value = service_state.value + 1"
)


class SQLiteStore:
    """Every call hops to the store's one thread; sqlite3 errors become StoreError."""

    def __init__(self, path: Path, *, wal: bool, busy_timeout_s: float) -> None:
        self._path = path
        self._wal = wal
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle-sqlite")
        self._conn: sqlite3.Connection | None = None
        self.description = f"sqlite:{path}"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(safe_message(f"{self.description}: {exc}")) from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("store is not open")
        return self._conn

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, check_same_thread=False)
        if self._wal:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"SQLite refused WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
        for statement in table_definitions("INTEGER", "REAL"):
            conn.execute(statement)
        conn.commit()
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._db.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    async def journal_mode(self) -> str:
        return await self._run(lambda: self._db.execute("PRAGMA journal_mode").fetchone()[0])

    async def get_verdicts(self, keys: list[str]) -> dict[str, CachedVerdict]:
        return await self._run(self._get_verdicts_sync, keys) if keys else {}

    def _get_verdicts_sync(self, keys: list[str]) -> dict[str, CachedVerdict]:
        found: dict[str, CachedVerdict] = {}
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start : start + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT key, label, probability, position_inconsistent, raw FROM verdicts "
                f"WHERE key IN ({marks})",
                chunk,
            )
            for key, *columns in rows:
                found[key] = cached_verdict(*columns)
        return found

    async def record(
        self, verdicts: dict[str, CachedVerdict], counters: dict[CounterKey, float]
    ) -> None:
        now = time.time()
        rows = [verdict_row(key, verdicts[key], now) for key in sorted(verdicts)]
        added = counter_rows(counters)
        if rows or added:
            await self._run(self._record_sync, rows, added)

    def _record_sync(self, rows: list[tuple], added: list[CounterRow]) -> None:
        with self._db:
            self._db.executemany(_INSERT_VERDICT, rows)
            self._db.executemany(_ADD_COUNTER, added)

    async def put_iteration(self, run_id: str, iteration: int, summary: dict[str, Any]) -> None:
        await self._run(self._put_iteration_sync, run_id, iteration, json.dumps(summary))

    def _put_iteration_sync(self, run_id: str, iteration: int, summary: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO iterations VALUES (?, ?, ?, ?)",
                (run_id, iteration, summary, time.time()),
            )

    async def list_iterations(self, run_id: str) -> list[dict[str, Any]]:
        return await self._run(self._list_iterations_sync, run_id)

    def _list_iterations_sync(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT summary FROM iterations WHERE run_id = ? ORDER BY iteration", (run_id,)
        )
        return [json.loads(summary) for (summary,) in rows]

    async def list_runs(self) -> list[dict[str, Any]]:
        return await self._run(self._list_runs_sync)

    def _list_runs_sync(self) -> list[dict[str, Any]]:
        rows = self._db.execute(RUN_LIST_QUERY)
        return [dict(zip(RUN_LIST_KEYS, row, strict=True)) for row in rows]

    async def put_run_status(self, run_id: str, status: dict[str, Any]) -> None:
        await self._run(self._put_run_status_sync, status_row(run_id, status, time.time()))

    def _put_run_status_sync(self, row: tuple) -> None:
        with self._db:
            self._db.execute(_PUT_STATUS, row)

    async def spent_usd(self, run_id: str | None) -> float:
        query, args = spent_query(run_id, ("?", "?", "?"))
        return await self._run(lambda: float(self._db.execute(query, args).fetchone()[0]))

    async def run_totals(self, run_id: str) -> dict[str, float]:
        query = RUN_TOTALS.format("?")
        return await self._run(lambda: dict(self._db.execute(query, (run_id,)).fetchall()))

    async def last_summary(self, run_id: str) -> dict[str, Any] | None:
        query = LAST_SUMMARY.format("?")
        row = await self._run(lambda: self._db.execute(query, (run_id,)).fetchone())
        return None if row is None else json.loads(row[0])

    async def counters(self, run_id: str | None = None) -> list[CounterRow]:
        return await self._run(self._counters_sync, run_id)

    def _counters_sync(self, run_id: str | None) -> list[CounterRow]:
        query = "SELECT run_id, iteration, name, value FROM vote_counters"
        if run_id is None:
            return list(self._db.execute(query))
        return list(self._db.execute(f"{query} WHERE run_id = ?", (run_id,)))

    async def session_epoch(self) -> int:
        return await self._run(self._session_epoch_sync)

    def _session_epoch_sync(self) -> int:
        query = "SELECT value FROM service_state WHERE name = ?"
        row = self._db.execute(query, (SESSION_EPOCH,)).fetchone()
        return 0 if row is None else row[0]

    async def end_sessions(self) -> int:
        return await self._run(self._end_sessions_sync)

    def _end_sessions_sync(self) -> int:
        with self._db:
            self._db.execute(_NEXT_EPOCH, (SESSION_EPOCH,))
            return self._session_epoch_sync()
