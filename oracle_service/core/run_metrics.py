"""Training gauges at /metrics, labelled by run_id, from what the coordinators post (iteration
summaries, run status) and the store's counters: per active run the latest iteration, the
iterations done and in all, the latest vote ratio n_minus / m, the accepted iterations so
far, abstentions by error kind and the judge's cost.

Bounded cardinality: only active runs get series (no end state posted, a summary within
metrics_active_s), at most metrics_max_runs of them (the most recently updated); a run
that ends or goes quiet drops out at the next scrape (a fresh registry per scrape).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from oracle_service.core.settings import Settings
from oracle_service.core.stats import ERRORS_PREFIX
from oracle_service.core.store import Store

PREFIX = "compo_run_"
ENDED = frozenset({"finished", "stopped", "failed"})


def active_runs(runs: list[dict], settings: Settings, now: float) -> list[dict]:
    """Runs that have not ended and reported within metrics_active_s, newest first."""
    active = [run for run in runs if run["state"] not in ENDED
              and now - run["updated_at"] <= settings.metrics_active_s]
    return active[: settings.metrics_max_runs]


class RunGauges:
    """One scrape's gauges (a fresh registry: runs that left the set leave no series)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def gauge(name: str, text: str, *labels: str) -> Gauge:
            return Gauge(PREFIX + name, text, ["run_id", *labels], registry=self.registry)

        self.iteration = gauge("iteration", "Index of the latest iteration reported.")
        self.done = gauge("iterations_done", "Iterations reported.")
        self.total = gauge("iterations_total", "Iterations the run makes in all.")
        self.ratio = gauge("vote_ratio", "n_minus / m of the latest iteration.")
        self.accepted = gauge("accepted_total", "Accepted iterations so far.")
        self.abstentions = gauge("abstentions", "Abstentions so far, by error kind.", "kind")
        self.cost = gauge("cost_usd", "Judge cost so far (with the run's internal runs).")

    def add(self, run: dict, summary: dict | None, totals: dict[str, float],
            cost: float | None) -> None:
        """One run's series."""
        run_id = run["run_id"]
        self.done.labels(run_id).set(run["iterations"])
        self.iteration.labels(run_id).set(run["last_iteration"])
        if run["iterations_total"] is not None:
            self.total.labels(run_id).set(run["iterations_total"])
        if summary is not None and summary.get("m"):
            self.ratio.labels(run_id).set(summary["n_minus"] / summary["m"])
        if summary is not None and summary.get("accepted_total") is not None:
            self.accepted.labels(run_id).set(summary["accepted_total"])
        for name, value in totals.items():
            if name.startswith(ERRORS_PREFIX):
                self.abstentions.labels(run_id, name.removeprefix(ERRORS_PREFIX)).set(value)
        if cost is not None:
            self.cost.labels(run_id).set(cost)


async def render_run_gauges(store: Store, settings: Settings) -> bytes:
    """The Prometheus text of the active runs' gauges."""
    gauges = RunGauges()
    for run in active_runs(await store.list_runs(), settings, time.time()):
        run_id = run["run_id"]
        cost = await store.spent_usd(run_id) if settings.priced else None
        gauges.add(run, await store.last_summary(run_id), await store.run_totals(run_id), cost)
    return generate_latest(gauges.registry)
