"""Both stores, SQLite and a real PostgreSQL server, keep the same contract."""

from __future__ import annotations

import asyncio

import pytest

from oracle_service.core.settings import Settings
from oracle_service.core.store import CachedVerdict, Store, StoreError
from oracle_service.core.stores import make_store
from oracle_service.schemas import VerdictLabel

VERDICT_A = CachedVerdict(VerdictLabel.A, 0.75, False, {"calls": [{"content": "A"}]})
VERDICT_B = CachedVerdict(VerdictLabel.B, None, True, {"calls": []})


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request, tmp_path) -> Settings:
    values = {"db_path": tmp_path / "store.sqlite3"}
    if request.param == "postgres":
        values["store_url"] = request.getfixturevalue("postgres_url")
    return Settings(**values)


def run_with(settings: Settings, work, replicas: int = 1):
    """Open `replicas` stores on the same settings, run `work(*stores)`, close them."""

    async def go():
        stores: list[Store] = [make_store(settings) for _ in range(replicas)]
        for store in stores:
            await store.open()
        try:
            return await work(*stores)
        finally:
            for store in stores:
                await store.close()

    return asyncio.run(go())


def test_first_verdict_wins_and_counters_add(store_settings):
    keys = [f"key-{i}" for i in range(1_200)]  # more than one SQLite query's worth

    async def work(store: Store):
        await store.record({"k": VERDICT_A}, {("r", 0, "comparisons"): 2, ("r", -1, "votes.a"): 1})
        await store.record({"k": VERDICT_B, **{key: VERDICT_B for key in keys}},
                           {("r", 0, "comparisons"): 3})  # fmt: skip
        return await store.get_verdicts(["k", "missing", *keys]), await store.counters("r")

    found, counters = run_with(store_settings, work)
    assert found["k"] == VERDICT_A and "missing" not in found
    assert len(found) == 1 + len(keys) and found["key-7"] == VERDICT_B
    assert sorted(counters) == [("r", -1, "votes.a", 1.0), ("r", 0, "comparisons", 5.0)]


def test_concurrent_writers_from_two_replicas_add_up(store_settings):
    """Two stores on one database (two replicas), 40 concurrent writes each, same rows."""
    counters = {("r", i, name): 1 for i in range(4) for name in ("comparisons", "votes.b")}

    async def work(one: Store, two: Store):
        writes = [store.record({f"v{i}": VERDICT_A}, counters) for i in range(40)
                  for store in (one, two)]  # fmt: skip
        await asyncio.gather(*writes)
        return await one.counters(), await two.counters()

    seen_by_one, seen_by_two = run_with(store_settings, work, replicas=2)
    assert sorted(seen_by_one) == sorted(seen_by_two)
    assert {row[3] for row in seen_by_one} == {40 * 2.0}  # 40 writes by each of 2 replicas
    assert len(seen_by_one) == 8


def test_iterations_are_replaced_and_listed_in_order(store_settings):
    async def work(store: Store):
        await store.put_iteration("r", 3, {"iteration": 3, "m": 1})
        await store.put_iteration("r", 1, {"iteration": 1, "m": 1})
        await store.put_iteration("r", 3, {"iteration": 3, "m": 2})
        await store.ping()
        return await store.list_iterations("r"), await store.list_iterations("other")

    listed, other = run_with(store_settings, work)
    assert listed == [{"iteration": 1, "m": 1}, {"iteration": 3, "m": 2}] and other == []


def test_runs_are_listed_newest_first_with_their_counts(store_settings):
    async def work(store: Store):
        await store.put_iteration("old", 0, {"iteration": 0})
        await store.put_iteration("old", 4, {"iteration": 4})
        await asyncio.sleep(0.01)  # received_at orders the list
        await store.put_iteration("new", 2, {"iteration": 2})
        return await store.list_runs()

    runs = run_with(store_settings, work)
    assert [(run["run_id"], run["iterations"], run["last_iteration"]) for run in runs] == [
        ("new", 1, 2), ("old", 2, 4)]
    assert runs[0]["updated_at"] > runs[1]["updated_at"]


def test_the_session_epoch_is_shared_and_moves_on_atomically(store_settings):
    """Two replicas ending sessions at once: every end gets its own epoch, both see the last."""

    async def work(one: Store, two: Store):
        before = await one.session_epoch()
        ends = await asyncio.gather(*(store.end_sessions() for _ in range(10)
                                      for store in (one, two)))  # fmt: skip
        return before, sorted(ends), await one.session_epoch(), await two.session_epoch()

    before, ends, seen_by_one, seen_by_two = run_with(store_settings, work, replicas=2)
    assert before == 0 and ends == list(range(1, 21)) and seen_by_one == seen_by_two == 20


def test_an_unreachable_postgres_is_a_store_error_without_the_password(postgres_server):
    url = f"postgresql://compo:hunter2-secret@127.0.0.1:{postgres_server.port + 1}/nope"
    settings = Settings(store_url=url, store_timeout_s=2.0)
    with pytest.raises(StoreError) as caught:
        run_with(settings, lambda store: store.ping())
    assert "hunter2-secret" not in str(caught.value)
    assert f"postgresql://compo@127.0.0.1:{postgres_server.port + 1}/nope" in str(caught.value)


def test_an_unusable_sqlite_file_is_a_store_error(tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    settings = Settings(db_path=tmp_path / "not-a-dir" / "oracle.sqlite3")
    with pytest.raises(StoreError, match="not-a-dir"):
        run_with(settings, lambda store: store.ping())


def test_run_status_spend_and_totals(store_settings):
    """What /metrics, the dashboard and the budget read: status joined to the run list, the
    judge cost of a run with its internal runs (not of a run whose id only starts alike),
    a run's counters summed by name, its latest summary."""
    counters = {("r_1", 0, "cost_usd"): 0.5, ("r_1", 1, "cost_usd"): 0.25,
                ("r_1.check", 0, "cost_usd"): 0.125, ("r_10", 0, "cost_usd"): 4.0,
                ("r_1", 0, "errors.timeout"): 2, ("r_1", 1, "errors.timeout"): 1}

    async def work(store: Store):
        await store.record({}, counters)
        for iteration in (0, 1):
            await store.put_iteration("r_1", iteration, {"iteration": iteration, "m": 8})
        await store.put_run_status("r_1", {"state": "running", "iterations_total": 9,
                                           "message": ""})
        await store.put_run_status("r_1", {"state": "stopped", "iterations_total": None,
                                           "message": "budget"})
        await store.put_iteration("other", 0, {"iteration": 0, "m": 1})
        return (await store.list_runs(), await store.spent_usd("r_1"),
                await store.spent_usd(None), await store.run_totals("r_1"),
                await store.last_summary("r_1"), await store.last_summary("none"))

    runs, spent, total, totals, last, none = run_with(store_settings, work)
    by_id = {run["run_id"]: run for run in runs}
    assert (by_id["r_1"]["state"], by_id["r_1"]["iterations_total"], by_id["r_1"]["message"]) \
        == ("stopped", 9, "budget")  # a total of None keeps the one stored
    assert (by_id["other"]["state"], by_id["other"]["message"]) == (None, "")
    assert spent == 0.875 and total == 4.875
    assert totals == {"cost_usd": 0.75, "errors.timeout": 3.0}
    assert last == {"iteration": 1, "m": 8} and none is None
