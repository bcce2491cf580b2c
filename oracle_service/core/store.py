"""The store: verdict cache, iteration summaries, vote counters and the dashboard's session
epoch, in SQLite or PostgreSQL.

SQLite (`store_sqlite.py`, the embedded default) serves one replica; PostgreSQL
(`store_postgres.py`, `store_url`) lets several replicas share one cache and one set of
statistics. A request's verdicts and counters are written in one transaction before it
is answered, so what a client was told is never lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from oracle_service.schemas import VerdictLabel

NO_ITERATION = -1  # counters of items sent without an iteration (keys cannot be NULL)
CounterKey = tuple[str, int, str]  # (run_id, iteration or NO_ITERATION, counter name)
CounterRow = tuple[str, int, str, float]


class StoreError(RuntimeError):
    """The store failed or is unreachable (the message is safe to show)."""


@dataclass(frozen=True)
class CachedVerdict:
    """A successful verdict, oriented to the canonical (sorted) response order."""

    label: VerdictLabel
    probability: float | None
    position_inconsistent: bool
    raw: dict[str, Any]


def table_definitions(integer: str, real: str) -> list[str]:
    """CREATE TABLE statements, with the dialect's 64-bit integer and double types."""
    return [
        "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, label TEXT NOT NULL, "
        f"probability {real}, position_inconsistent {integer} NOT NULL, raw TEXT NOT NULL, "
        f"created_at {real} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS iterations (run_id TEXT NOT NULL, iteration {integer} "
        f"NOT NULL, summary TEXT NOT NULL, received_at {real} NOT NULL, "
        "PRIMARY KEY (run_id, iteration))",
        f"CREATE TABLE IF NOT EXISTS vote_counters (run_id TEXT NOT NULL, iteration {integer} "
        f"NOT NULL, name TEXT NOT NULL, value {real} NOT NULL, "
        "PRIMARY KEY (run_id, iteration, name))",
        f"CREATE TABLE IF NOT EXISTS service_state (name TEXT PRIMARY KEY, value {integer} "
        "NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS run_status (run_id TEXT PRIMARY KEY, state TEXT NOT NULL, "
        f"iterations_total {integer}, message TEXT NOT NULL, updated_at {real} NOT NULL)",
    ]


def counter_rows(counters: dict[CounterKey, float]) -> list[CounterRow]:
    """Rows to add, sorted by key: replicas lock rows in one order, so never deadlock."""
    return [(*key, value) for key, value in sorted(counters.items()) if value]


def verdict_row(key: str, verdict: CachedVerdict, now: float) -> tuple:
    """A verdicts row (both stores use the same columns)."""
    if verdict.label is VerdictLabel.ABSTAIN:
        raise ValueError("abstentions are never cached")
    label, raw = verdict.label.value, json.dumps(verdict.raw)
    return (key, label, verdict.probability, int(verdict.position_inconsistent), raw, now)


def cached_verdict(label: str, probability: Any, inconsistent: Any, raw: str) -> CachedVerdict:
    return CachedVerdict(VerdictLabel(label), probability, bool(inconsistent), json.loads(raw))


class Store(Protocol):
    """What the service needs from a store; every failure is a StoreError."""

    description: str  # where it is, without secrets

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def get_verdicts(self, keys: list[str]) -> dict[str, CachedVerdict]: ...

    async def record(
        self, verdicts: dict[str, CachedVerdict], counters: dict[CounterKey, float]
    ) -> None:
        """Cache the verdicts (first one wins) and add the counters, in one transaction."""

    async def put_iteration(self, run_id: str, iteration: int, summary: dict[str, Any]) -> None: ...

    async def list_iterations(self, run_id: str) -> list[dict[str, Any]]: ...

    async def counters(self, run_id: str | None = None) -> list[CounterRow]:
        """Counter rows of one run, or of every run."""

    async def list_runs(self) -> list[dict[str, Any]]:
        """Runs with iteration summaries: counts, last iteration, time of the latest post,
        and the status the run sent (state, iterations_total, message; None if none)."""

    async def put_run_status(self, run_id: str, status: dict[str, Any]) -> None:
        """Store a run's state and message; iterations_total None keeps the one stored."""

    async def spent_usd(self, run_id: str | None) -> float:
        """Judge cost recorded for a run and its internal runs (`<run_id>.*`), or for all."""

    async def run_totals(self, run_id: str) -> dict[str, float]:
        """A run's counters summed over its iterations, by name (summed in the store)."""

    async def last_summary(self, run_id: str) -> dict[str, Any] | None:
        """The summary of the run's latest iteration (None: it has none)."""

    async def session_epoch(self) -> int:
        """The dashboard's session epoch (0 until the first logout)."""

    async def end_sessions(self) -> int:
        """Move the session epoch on (ending every session issued before); the new epoch."""


RUN_LIST_QUERY = (
    "SELECT i.run_id, COUNT(*), MAX(i.iteration), MAX(i.received_at), s.state, "
    "s.iterations_total, COALESCE(s.message, '') FROM iterations i LEFT JOIN run_status s "
    "ON s.run_id = i.run_id GROUP BY i.run_id, s.state, s.iterations_total, s.message "
    "ORDER BY MAX(i.received_at) DESC, i.run_id"
)
RUN_LIST_KEYS = ("run_id", "iterations", "last_iteration", "updated_at", "state",
                 "iterations_total", "message")
COST_COUNTER = "cost_usd"  # the counter the judge's cost is added to (core/stats.py)
# Spend of everything, or of one run id and its internal runs ("<run_id>.*")
SPENT_ALL = f"SELECT COALESCE(SUM(value), 0) FROM vote_counters WHERE name = '{COST_COUNTER}'"
SPENT_RUN = SPENT_ALL + " AND (run_id = {} OR substr(run_id, 1, {}) = {})"
SESSION_EPOCH = "session_epoch"  # its row in service_state


RUN_TOTALS = "SELECT name, SUM(value) FROM vote_counters WHERE run_id = {} GROUP BY name"
LAST_SUMMARY = "SELECT summary FROM iterations WHERE run_id = {} ORDER BY iteration DESC LIMIT 1"


def spent_query(run_id: str | None, marks: tuple[str, str, str]) -> tuple[str, tuple]:
    """The statement and arguments of Store.spent_usd, given the dialect's three
    placeholders in order (SQLite: ?, ?, ?; PostgreSQL: $1, $2, $3)."""
    if run_id is None:
        return SPENT_ALL, ()
    return SPENT_RUN.format(*marks), (run_id, len(run_id) + 1, f"{run_id}.")


def status_row(run_id: str, status: dict[str, Any], now: float) -> tuple:
    return (run_id, status["state"], status.get("iterations_total"), status.get("message", ""),
            now)


def redacted_url(url: str) -> str:
    """postgresql://user@host:port/db with the password left out."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"
