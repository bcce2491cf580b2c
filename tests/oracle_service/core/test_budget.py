"""The budget guard: a request's real cost and its released reservation are one step, so
an admission never counts a settling request twice (spent and still reserved)."""

from __future__ import annotations

import asyncio

from oracle_service.core.budget import BudgetGuard, estimated_usd
from oracle_service.core.store import COST_COUNTER
from oracle_service.core.stores import make_store
from oracle_service.schemas import ComparisonItem, RunBudget

PRICES = {"judge_input_usd_per_mtok": 2.0, "judge_output_usd_per_mtok": 8.0}


def test_an_admission_during_a_settle_sees_the_cost_once(make_settings):
    settings = make_settings(**PRICES)
    item = ComparisonItem(prompt="p", response_a="a", response_b="b", run_id="r")
    cost = estimated_usd(settings, item)
    budget = RunBudget(run_id="r", usd=2.5 * cost)  # room for two, if counted once

    async def scenario() -> tuple[list[bool], list[bool]]:
        store = make_store(settings)
        await store.open()
        guard = BudgetGuard(settings, store)
        recorded, proceed = asyncio.Event(), asyncio.Event()

        async def recording() -> None:  # the first request's cost lands, then commits slowly
            await store.record({}, {("r", 0, COST_COUNTER): cost})
            recorded.set()
            await proceed.wait()

        try:
            first = await guard.admit([item], budget)
            settling = asyncio.create_task(guard.settle(first, recording()))
            await recorded.wait()
            second = asyncio.create_task(guard.admit([item], budget))  # scheduled first
            proceed.set()
            await settling
            return first.allowed, (await second).allowed
        finally:
            await store.close()

    assert asyncio.run(scenario()) == ([True], [True])
