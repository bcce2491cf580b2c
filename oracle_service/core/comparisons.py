"""The comparison service: canonical order, cache, backend call, statistics.

A request's items are answered together: cache hits (bounded by request_deadline_s), then
the backend for the misses (each item isolated, all bounded by item_deadline_s), then one
store transaction with the new verdicts and the request's counters, then the answer. A
failed store is a 503 for the request, never an answer that the statistics do not hold.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from oracle_service.backends.base import Backend, Verdict
from oracle_service.core.budget import Admission, BudgetGuard
from oracle_service.core.metrics import ServiceMetrics
from oracle_service.core.settings import Settings
from oracle_service.core.stats import Observation, counter_deltas
from oracle_service.core.store import CachedVerdict, Store, StoreError
from oracle_service.schemas import (
    DEFAULT_RUN_ID,
    ComparisonItem,
    ComparisonResult,
    ErrorKind,
    RunBudget,
    VerdictLabel,
)

logger = logging.getLogger(__name__)

TOKENS_PER_MTOK = 1_000_000  # prices are per million tokens


@dataclass(frozen=True)
class _Canonical:
    """An item with its responses in sorted order; `flipped` if that swapped them."""

    item: ComparisonItem
    flipped: bool
    key: str

    @property
    def identical(self) -> bool:
        return self.item.response_a == self.item.response_b


def cache_key(identity: str, params: dict, item: ComparisonItem) -> str:
    """sha256 over backend identity, model/template/decoding params and the sorted pair."""
    payload = {
        "backend": identity,
        "params": params,
        "prompt": item.prompt,
        "responses": sorted((item.response_a, item.response_b)),
    }
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


class ComparisonService:
    """Answers batches of comparisons; every item gets a verdict or an explicit abstention."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        store: Store,
        metrics: ServiceMetrics,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._store = store
        self._metrics = metrics
        self._budget = BudgetGuard(settings, store)

    def _canonical(self, item: ComparisonItem) -> _Canonical:
        flipped = item.response_a > item.response_b
        if flipped:
            item = item.model_copy(
                update={"response_a": item.response_b, "response_b": item.response_a}
            )
        key = cache_key(self._backend.identity, self._backend.cache_params, item)
        return _Canonical(item, flipped, key)

    async def compare(
        self,
        items: Sequence[ComparisonItem],
        arrived: float | None = None,
        budget: RunBudget | None = None,
    ) -> list[ComparisonResult]:
        """Results in item order; `arrived` (event-loop time) starts the item deadline;
        `budget`: the run's own judge budget (the service's applies to every request)."""
        arrived = asyncio.get_running_loop().time() if arrived is None else arrived
        started = time.perf_counter()
        canonical = [self._canonical(item) for item in items]
        pending = {c.key: c.item for c in canonical if not c.identical}
        hits: dict[str, CachedVerdict] = {}
        if self._settings.cache_enabled:
            hits = await self._cached(list(pending), arrived + self._settings.request_deadline_s)
        hit_latency = time.perf_counter() - started
        misses = [key for key in pending if key not in hits]
        admission = None
        if misses and self._budget.applies(budget):
            admission = await self._budget.admit([pending[key] for key in misses], budget)
        try:
            fresh = await self._fresh(pending, misses, admission, arrived)
            latencies = (hit_latency, time.perf_counter() - started)
            results, observations = self._answer(items, canonical, hits, fresh, latencies)
            new_verdicts = {key: self._to_cached(v) for key, v in fresh.items() if v.ok}
            if not self._settings.cache_enabled:
                new_verdicts = {}
        except BaseException:
            await self._budget.release(admission)  # nothing was recorded
            raise
        await self._budget.settle(admission,
                                  self._store.record(new_verdicts, counter_deltas(observations)))
        for obs in observations:
            self._metrics.observe(obs)
        return results

    async def _fresh(self, pending: dict[str, ComparisonItem], misses: list[str],
                     admission: Admission | None, arrived: float) -> dict[str, Verdict]:
        """The backend's verdicts of the admitted misses; the others abstain (budget)."""
        allowed = admission.allowed if admission is not None else [True] * len(misses)
        asked = [key for key, ok in zip(misses, allowed, strict=True) if ok]
        deadline = arrived + self._settings.item_deadline_s
        answers = await self._ask_backend([pending[key] for key in asked], deadline)
        fresh = dict(zip(asked, answers, strict=True))
        for key in misses:
            if key not in fresh:  # refused by a budget: no call was made
                fresh[key] = Verdict.abstain(ErrorKind.BUDGET, admission.refusal)
        return fresh

    def _answer(
        self,
        items: Sequence[ComparisonItem],
        canonical: list[_Canonical],
        hits: dict[str, CachedVerdict],
        fresh: dict[str, Verdict],
        latencies: tuple[float, float],
    ) -> tuple[list[ComparisonResult], list[Observation]]:
        """Each item's result and observation; a pair's usage is counted once per request."""
        results, observations = [], []
        usage_counted: set[str] = set()
        for original, c in zip(items, canonical, strict=True):
            cached = c.key in hits
            verdict = self._lookup(c, hits, fresh)
            if c.flipped:
                verdict = verdict.flipped()
            counts_usage = c.key in fresh and c.key not in usage_counted
            usage_counted.add(c.key)
            latency = latencies[0] if cached or c.identical else latencies[1]
            obs = self._observation(original, verdict, cached, latency, counts_usage)
            observations.append(obs)
            results.append(self._to_result(original, verdict, cached, self._item_cost(obs)))
        return results, observations

    async def _cached(self, keys: list[str], deadline: float) -> dict[str, CachedVerdict]:
        """Cache hits, or StoreError (a 503) if the store does not answer by `deadline`."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._store.get_verdicts(keys), max(0.0, remaining))
        except asyncio.TimeoutError:
            limit = self._settings.request_deadline_s
            message = f"the store did not answer within request_deadline_s={limit}"
            raise StoreError(message) from None

    async def _ask_backend(self, items: list[ComparisonItem], deadline: float) -> list[Verdict]:
        """The backend's verdicts; if it breaks its promise and raises, every item abstains."""
        if not items:
            return []
        try:
            verdicts = await self._backend.compare(items, deadline)
            if len(verdicts) != len(items):
                raise RuntimeError(f"{len(items)} items, {len(verdicts)} verdicts")
        except Exception:
            logger.exception("the backend failed on a batch of %d items", len(items))
            message = "the backend failed; see the service log"
            return [Verdict.abstain(ErrorKind.INTERNAL_ERROR, message) for _ in items]
        return verdicts

    @staticmethod
    def _lookup(
        c: _Canonical, hits: dict[str, CachedVerdict], fresh: dict[str, Verdict]
    ) -> Verdict:
        if c.identical:
            return Verdict(VerdictLabel.TIE, probability=0.5, raw={"identical": True})
        if c.key in hits:
            hit = hits[c.key]
            return Verdict(
                hit.label,
                hit.probability,
                raw=hit.raw,
                position_inconsistent=hit.position_inconsistent,
            )
        return fresh[c.key]

    @staticmethod
    def _to_cached(verdict: Verdict) -> CachedVerdict:
        return CachedVerdict(
            verdict.label, verdict.probability, verdict.position_inconsistent, verdict.raw
        )

    @staticmethod
    def _to_result(
        item: ComparisonItem, verdict: Verdict, cached: bool, cost: float | None
    ) -> ComparisonResult:
        return ComparisonResult(
            verdict=verdict.label,
            probability=verdict.probability,
            cached=cached,
            error=verdict.error,
            perturbation=item.perturbation,
            position_inconsistent=verdict.position_inconsistent,
            cost_usd=cost,
        )

    def _item_cost(self, obs: Observation) -> float | None:
        """What the item cost: its calls' price, 0 for a pair not sent; None unpriced."""
        if obs.cost_usd is not None:
            return obs.cost_usd
        priced = None not in (self._settings.judge_input_usd_per_mtok,
                              self._settings.judge_output_usd_per_mtok)
        return 0.0 if priced else None

    def _cost_usd(self, verdict: Verdict) -> float | None:
        input_price = self._settings.judge_input_usd_per_mtok
        output_price = self._settings.judge_output_usd_per_mtok
        if input_price is None or output_price is None:
            return None
        spent = verdict.prompt_tokens * input_price + verdict.completion_tokens * output_price
        return spent / TOKENS_PER_MTOK

    def _observation(
        self, item: ComparisonItem, verdict: Verdict, cached: bool, latency: float, usage: bool
    ) -> Observation:
        return Observation(
            run_id=item.run_id or DEFAULT_RUN_ID,
            iteration=item.iteration,
            label=verdict.label,
            cached=cached,
            position_inconsistent=verdict.position_inconsistent,
            error_kind=verdict.error.kind.value if verdict.error is not None else None,
            latency_s=latency,
            prompt_tokens=verdict.prompt_tokens if usage else 0,
            completion_tokens=verdict.completion_tokens if usage else 0,
            cost_usd=self._cost_usd(verdict) if usage else None,
        )
