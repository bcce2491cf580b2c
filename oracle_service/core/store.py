"""Persistent SQLite storage (verdict cache, iteration summaries) off the event loop."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from oracle_service.schemas import VerdictLabel

T = TypeVar("T")

# SQLite caps the number of host parameters per statement; stay well below it.
_KEYS_PER_QUERY = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    probability REAL,
    position_inconsistent INTEGER NOT NULL,
    raw TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS iterations (
    run_id TEXT NOT NULL,
    iteration INTEGER NOT NULL,
    summary TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (run_id, iteration)
);
"""


@dataclass(frozen=True)
class CachedVerdict:
    """A successful verdict, oriented to the canonical (sorted) response order."""

    label: VerdictLabel
    probability: float | None
    position_inconsistent: bool
    raw: dict[str, Any]


class SQLiteStore:
    """One connection owned by one worker thread; every call hops to that thread."""

    def __init__(self, path: Path, *, wal: bool, busy_timeout_s: float) -> None:
        self._path = path
        self._wal = wal
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, check_same_thread=False)
        if self._wal:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"SQLite refused WAL mode for {self._path} (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        conn.commit()
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._db.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> bool:
        return await self._run(lambda: self._db.execute("SELECT 1").fetchone() == (1,))

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
            for key, label, probability, inconsistent, raw in rows:
                found[key] = CachedVerdict(
                    VerdictLabel(label), probability, bool(inconsistent), json.loads(raw)
                )
        return found

    async def put_verdicts(self, entries: dict[str, CachedVerdict]) -> None:
        if entries:
            await self._run(self._put_verdicts_sync, entries)

    def _put_verdicts_sync(self, entries: dict[str, CachedVerdict]) -> None:
        if any(entry.label is VerdictLabel.ABSTAIN for entry in entries.values()):
            raise ValueError("abstentions are never cached")
        now = time.time()
        rows = [
            (
                key,
                v.label.value,
                v.probability,
                int(v.position_inconsistent),
                json.dumps(v.raw),
                now,
            )
            for key, v in entries.items()
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)", rows)

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
        """Runs with iteration summaries: counts, last iteration, time of the latest post."""
        return await self._run(self._list_runs_sync)

    def _list_runs_sync(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT run_id, COUNT(*), MAX(iteration), MAX(received_at) FROM iterations "
            "GROUP BY run_id ORDER BY MAX(received_at) DESC, run_id"
        )
        keys = ("run_id", "iterations", "last_iteration", "updated_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]
