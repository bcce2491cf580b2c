"""Prometheus metrics, one registry per app instance (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from oracle_service.core.stats import Observation

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Counters and histograms exported at GET /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.comparisons = Counter(
            "oracle_comparisons", "Comparison items answered.", ["verdict", "cached"], registry=reg
        )
        self.errors = Counter(
            "oracle_backend_errors", "Abstentions by error kind.", ["kind"], registry=reg
        )
        self.position_inconsistent = Counter(
            "oracle_position_inconsistent", "Verdicts that changed with order.", registry=reg
        )
        self.tokens = Counter("oracle_tokens", "Judge tokens used.", ["kind"], registry=reg)
        self.latency = Histogram(
            "oracle_comparison_latency_seconds",
            "Time to answer one item.",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.backend_attempts = Counter(
            "oracle_backend_attempts", "HTTP attempts to the judge.", ["outcome"], registry=reg
        )
        self.batch_size = Histogram(
            "oracle_backend_batch_size",
            "Pairs per backend batch.",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )

    def observe(self, obs: Observation) -> None:
        self.comparisons.labels(verdict=obs.label.value, cached=str(obs.cached).lower()).inc()
        if obs.error_kind is not None:
            self.errors.labels(kind=obs.error_kind).inc()
        if obs.position_inconsistent:
            self.position_inconsistent.inc()
        self.tokens.labels(kind="prompt").inc(obs.prompt_tokens)
        self.tokens.labels(kind="completion").inc(obs.completion_tokens)
        self.latency.observe(obs.latency_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
