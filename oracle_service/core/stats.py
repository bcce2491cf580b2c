"""Vote statistics as additive counters, so every replica adds to the same rows in the store.

An answered item becomes a handful of counters under (run_id, iteration): comparisons,
votes by label, cache hits, errors by kind, tokens, cost, and one latency-histogram
bucket. Sums of counters are the statistics of any scope (an iteration, a run, the
service); latency percentiles come from the merged histogram, to within one bucket.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from oracle_service.core.store import NO_ITERATION, CounterKey, CounterRow
from oracle_service.schemas import (
    IterationStats,
    RunStats,
    ServiceStats,
    StatsSummary,
    VerdictLabel,
    VoteCounts,
)

MS_PER_S = 1000.0
# Latency histogram: bucket i holds latencies in (BASE * GROWTH**(i-1), BASE * GROWTH**i] ms;
# a percentile is reported as its bucket's upper edge, at most 9% above the true value.
LATENCY_BASE_MS = 0.001
LATENCY_GROWTH = 2.0 ** (1 / 8)
LATENCY_PREFIX = "latency."
ERRORS_PREFIX = "errors."
VOTES_PREFIX = "votes."
PRICED = "priced"  # items whose cost is known (cost_usd stays None while this is 0)


@dataclass(frozen=True)
class Observation:
    """What happened to one answered comparison item."""

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


def latency_bucket(latency_s: float) -> int:
    """The histogram bucket of a latency (0 holds everything up to LATENCY_BASE_MS)."""
    ms = latency_s * MS_PER_S
    if ms <= LATENCY_BASE_MS:
        return 0
    return math.ceil(math.log(ms / LATENCY_BASE_MS) / math.log(LATENCY_GROWTH))


def bucket_upper_ms(bucket: int) -> float:
    return LATENCY_BASE_MS * LATENCY_GROWTH**bucket


def observation_counters(obs: Observation) -> Counter[str]:
    """The counters one item adds."""
    counters: Counter[str] = Counter(comparisons=1)
    counters[VOTES_PREFIX + obs.label.value] += 1
    counters["position_inconsistent"] += obs.position_inconsistent
    counters["cache_hits"] += obs.cached
    if obs.error_kind is not None:
        counters[ERRORS_PREFIX + obs.error_kind] += 1
    counters[f"{LATENCY_PREFIX}{latency_bucket(obs.latency_s)}"] += 1
    counters["prompt_tokens"] += obs.prompt_tokens
    counters["completion_tokens"] += obs.completion_tokens
    if obs.cost_usd is not None:
        counters["cost_usd"] += obs.cost_usd
        counters[PRICED] += 1
    return counters


def counter_deltas(observations: Iterable[Observation]) -> dict[CounterKey, float]:
    """What a request adds to the store, keyed by (run_id, iteration, counter)."""
    deltas: dict[CounterKey, float] = defaultdict(float)
    for obs in observations:
        iteration = NO_ITERATION if obs.iteration is None else obs.iteration
        for name, value in observation_counters(obs).items():
            deltas[(obs.run_id, iteration, name)] += value
    return dict(deltas)


def histogram_percentile(buckets: dict[int, float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) in ms: the upper edge of its bucket."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank, seen = max(1.0, math.ceil(q * total)), 0.0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen >= rank:
            return bucket_upper_ms(bucket)
    return bucket_upper_ms(max(buckets))


def summary_fields(counters: dict[str, float]) -> dict:
    """StatsSummary fields from summed counters."""
    comparisons = int(counters.get("comparisons", 0))
    cache_hits = int(counters.get("cache_hits", 0))
    votes = {
        label.value: int(counters.get(VOTES_PREFIX + label.value, 0)) for label in VerdictLabel
    }
    errors = {
        name.removeprefix(ERRORS_PREFIX): int(value)
        for name, value in sorted(counters.items())
        if name.startswith(ERRORS_PREFIX) and value
    }
    buckets = {
        int(name.removeprefix(LATENCY_PREFIX)): value
        for name, value in counters.items()
        if name.startswith(LATENCY_PREFIX)
    }
    return {
        "comparisons": comparisons,
        "votes": VoteCounts(**votes),
        "position_inconsistent": int(counters.get("position_inconsistent", 0)),
        "cache_hits": cache_hits,
        "cache_hit_rate": cache_hits / comparisons if comparisons else None,
        "errors": errors,
        "latency_ms_p50": histogram_percentile(buckets, 0.50),
        "latency_ms_p95": histogram_percentile(buckets, 0.95),
        "prompt_tokens": int(counters.get("prompt_tokens", 0)),
        "completion_tokens": int(counters.get("completion_tokens", 0)),
        "cost_usd": counters.get("cost_usd", 0.0) if counters.get(PRICED) else None,
    }


def _sum_by(rows: Iterable[CounterRow], scope) -> dict:
    sums: dict = defaultdict(lambda: defaultdict(float))
    for row in rows:
        sums[scope(row)][row[2]] += row[3]
    return sums


def service_stats(rows: list[CounterRow]) -> ServiceStats:
    """Totals over every run, and each run's totals."""
    total = _sum_by(rows, lambda row: None)[None]
    runs = {
        run_id: StatsSummary(**summary_fields(sums))
        for run_id, sums in sorted(_sum_by(rows, lambda row: row[0]).items())
    }
    return ServiceStats(**summary_fields(total), runs=runs)


def run_stats(run_id: str, rows: list[CounterRow]) -> RunStats | None:
    """One run's totals and per-iteration breakdown; None if it has no counters."""
    if not rows:
        return None
    total = _sum_by(rows, lambda row: None)[None]
    per_iteration = sorted(_sum_by(rows, lambda row: row[1]).items())
    iterations = [
        IterationStats(iteration=iteration, **summary_fields(sums))
        for iteration, sums in per_iteration
        if iteration != NO_ITERATION
    ]
    return RunStats(run_id=run_id, iterations=iterations, **summary_fields(total))
