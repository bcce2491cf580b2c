"""In-memory vote statistics per run and per iteration (reset when the service restarts)."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

from oracle_service.schemas import (
    IterationStats,
    RunStats,
    ServiceStats,
    StatsSummary,
    VerdictLabel,
    VoteCounts,
)

MS_PER_S = 1000.0


@dataclass(frozen=True)
class Observation:
    """What happened to one comparison item."""

    run_id: str
    iteration: int | None
    label: VerdictLabel
    cached: bool
    position_inconsistent: bool
    error_kind: str | None
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class _Tally:
    """Counters for one scope."""

    def __init__(self, latency_window: int) -> None:
        self.comparisons = 0
        self.votes: Counter[str] = Counter()
        self.position_inconsistent = 0
        self.cache_hits = 0
        self.errors: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=latency_window)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd: float | None = None

    def add(self, obs: Observation) -> None:
        self.comparisons += 1
        self.votes[obs.label.value] += 1
        self.position_inconsistent += obs.position_inconsistent
        self.cache_hits += obs.cached
        if obs.error_kind is not None:
            self.errors[obs.error_kind] += 1
        self.latencies.append(obs.latency_s)
        self.prompt_tokens += obs.prompt_tokens
        self.completion_tokens += obs.completion_tokens
        if obs.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + obs.cost_usd

    def fields(self) -> dict:
        latencies = list(self.latencies)
        p50, p95 = percentile(latencies, 0.50), percentile(latencies, 0.95)
        return {
            "comparisons": self.comparisons,
            "votes": VoteCounts(**self.votes),
            "position_inconsistent": self.position_inconsistent,
            "cache_hits": self.cache_hits,
            "cache_hit_rate": self.cache_hits / self.comparisons if self.comparisons else None,
            "errors": dict(self.errors),
            "latency_ms_p50": None if p50 is None else p50 * MS_PER_S,
            "latency_ms_p95": None if p95 is None else p95 * MS_PER_S,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


class StatsBook:
    """Tallies for the whole service, each run, and each (run, iteration)."""

    def __init__(self, latency_window: int) -> None:
        self._window = latency_window
        self._total = _Tally(latency_window)
        self._runs: dict[str, _Tally] = {}
        self._iterations: dict[str, dict[int, _Tally]] = {}

    def record(self, obs: Observation) -> None:
        self._total.add(obs)
        self._runs.setdefault(obs.run_id, _Tally(self._window)).add(obs)
        if obs.iteration is not None:
            per_run = self._iterations.setdefault(obs.run_id, {})
            per_run.setdefault(obs.iteration, _Tally(self._window)).add(obs)

    def service_stats(self) -> ServiceStats:
        runs = {run_id: StatsSummary(**tally.fields()) for run_id, tally in self._runs.items()}
        return ServiceStats(**self._total.fields(), runs=runs)

    def run_stats(self, run_id: str) -> RunStats | None:
        tally = self._runs.get(run_id)
        if tally is None:
            return None
        per_iteration = sorted(self._iterations.get(run_id, {}).items())
        iterations = [IterationStats(iteration=i, **t.fields()) for i, t in per_iteration]
        return RunStats(run_id=run_id, iterations=iterations, **tally.fields())
