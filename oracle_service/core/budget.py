"""The judge budget, enforced before the upstream call: the service's (budget_usd, over all
runs) and a run's own (ComparisonRequest.budget).

Each comparison that would call the judge is priced in advance from its characters (the
same estimate as the token rate limit, plus judge_max_tokens of output per call) and
admitted only if what was spent (the store's cost counters, shared by every replica), what
this replica's calls in flight have reserved, and the estimate stay within every budget
that applies; otherwise it abstains with kind `budget` and no call is made. A request's
real cost is recorded and its reservations freed in one step (never counted twice), so a
budget can only be passed by the calls other replicas have in flight, or where the
estimate falls short of the judge's own count.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

from oracle_service.core.settings import TEMPLATE_FIELDS, Settings
from oracle_service.core.store import Store
from oracle_service.schemas import ComparisonItem, RunBudget

TOKENS_PER_MTOK = 1_000_000  # prices are per million tokens
SERVICE = None  # the scope of the service's own budget: every run


def template_chars(settings: Settings) -> int:
    """Characters of a judge call besides the prompt and the two responses."""
    template = settings.prompt_template
    placeholders = sum(template.count(name) * len(name) for name in TEMPLATE_FIELDS)
    return len(settings.judge_system_prompt) + len(template) - placeholders


def calls_per_comparison(settings: Settings) -> int:
    return 2 if settings.judge_position_mode == "both" else 1


def cost_usd(settings: Settings, prompt_tokens: float, completion_tokens: float) -> float:
    """The judge's price of these tokens (the settings must be priced)."""
    spent = (prompt_tokens * settings.judge_input_usd_per_mtok
             + completion_tokens * settings.judge_output_usd_per_mtok)
    return spent / TOKENS_PER_MTOK


def estimated_usd(settings: Settings, item: ComparisonItem) -> float:
    """What judging `item` will cost, at most about: every call's characters over
    chars_per_token, and judge_max_tokens of output per call."""
    chars = template_chars(settings) + len(item.prompt) + len(item.response_a) + len(
        item.response_b)
    calls = calls_per_comparison(settings)
    return cost_usd(settings, calls * chars / settings.chars_per_token,
                    calls * settings.judge_max_tokens)


@dataclass
class Admission:
    """Which items of a request may call the judge, and what they reserved."""

    allowed: list[bool]
    reserved: dict[str | None, float] = field(default_factory=dict)  # by budget scope
    refusal: str = ""  # why the others abstain


def fmt(usd: float) -> str:
    return f"${usd:.4f}"


class BudgetGuard:
    """Admits judge calls within the budgets; one per service (replica)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings, self._store = settings, store
        self._reserved: dict[str | None, float] = defaultdict(float)
        self._lock = asyncio.Lock()

    def applies(self, budget: RunBudget | None) -> bool:
        return self._settings.budget_usd is not None or budget is not None

    async def admit(self, items: Sequence[ComparisonItem], budget: RunBudget | None
                    ) -> Admission:
        """Reserve the estimated cost of each item in order while every budget holds."""
        limits: dict[str | None, float] = {}
        if self._settings.budget_usd is not None:
            limits[SERVICE] = self._settings.budget_usd
        if budget is not None:
            limits[budget.run_id] = budget.usd
        admission = Admission(allowed=[])
        async with self._lock:  # spent and reserved are read together, never half-released
            spent = {scope: await self._store.spent_usd(scope) for scope in limits}
            for item in items:
                cost = estimated_usd(self._settings, item)
                over = [scope for scope, limit in limits.items()
                        if spent[scope] + self._reserved[scope] + cost > limit]
                if over:
                    admission.allowed.append(False)
                    admission.refusal = admission.refusal or self.refusal(
                        over[0], limits[over[0]], spent[over[0]], cost)
                    continue
                admission.allowed.append(True)
                for scope in limits:
                    self._reserved[scope] += cost
                    admission.reserved[scope] = admission.reserved.get(scope, 0.0) + cost
        return admission

    async def release(self, admission: Admission | None) -> None:
        """The request failed before its cost was recorded: free its reservations."""
        if admission is not None:
            async with self._lock:
                self._free(admission)

    async def settle(self, admission: Admission | None, recording: Awaitable[None]) -> None:
        """Record the request's real cost and free its reservations in one step under the
        admission lock: no admission sees the cost both spent and reserved, or neither."""
        if admission is None:
            await recording
            return
        async with self._lock:
            try:
                await recording
            finally:
                self._free(admission)

    def _free(self, admission: Admission) -> None:
        for scope, amount in admission.reserved.items():
            self._reserved[scope] = max(0.0, self._reserved[scope] - amount)

    def refusal(self, scope: str | None, limit: float, spent: float, cost: float) -> str:
        """The abstention's message: which budget, what was spent, how to go on."""
        if scope is SERVICE:
            return (f"the service's judge budget is spent: {fmt(spent)} of budget_usd="
                    f"{fmt(limit)} (COMPO_ORACLE_BUDGET_USD; this comparison needs about "
                    f"{fmt(cost)}); raise it on the service")
        return (f"run {scope}'s judge budget is spent: {fmt(spent)} of {fmt(limit)} "
                f"(oracle.budget_usd; this comparison needs about {fmt(cost)}); raise it "
                "and resume the run")
