"""Two replicas (real processes) behind one real PostgreSQL store: one run's statistics and
one cache, whichever replica answers; a replica killed mid-load loses nothing it answered."""

from __future__ import annotations

import threading

import httpx
import pytest

from oracle_service.testing.fake_judge import WAIT_S, BackgroundServer, FakeJudge
from oracle_service.testing.processes import ServiceProcess
from tests.oracle_service.conftest import JUDGE_KEY, TOKEN

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def replica_settings(postgres_url, fake_judge):
    return {
        "api_token": TOKEN,
        "store_url": postgres_url,
        "judge_base_url": fake_judge.base_url,
        "judge_api_key": JUDGE_KEY,
        "judge_model": "fake-judge",
        "log_level": "warning",
    }


def items(tag: str, count: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"{tag} question {i}", "response_a": f"short {i}",
             "response_b": f"a longer answer {i}", "run_id": "shared", "iteration": i % 3,
             "perturbation": i} for i in range(start, start + count)]  # fmt: skip


def post(url: str, batch: list[dict]) -> list[dict]:
    response = httpx.post(f"{url}/v1/comparisons", json={"items": batch}, headers=HEADERS,
                          timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["results"]


def run_stats(url: str) -> dict:
    return httpx.get(f"{url}/v1/runs/shared/stats", headers=HEADERS, timeout=30).json()


def test_two_replicas_share_statistics_and_cache(replica_settings, fake_judge, tmp_path):
    with ServiceProcess(replica_settings, tmp_path / "one.log") as one, \
            ServiceProcess(replica_settings, tmp_path / "two.log") as two:  # fmt: skip
        first, second = items("one", 30), items("two", 20, start=30)
        post(one.url, first)
        post(two.url, second)
        again = post(two.url, first)  # answered by replica one, cached in the shared store
        stats_one, stats_two = run_stats(one.url), run_stats(two.url)
    assert all(result["cached"] and result["verdict"] == "b" for result in again)
    assert len(fake_judge.judge.requests) == 50  # one judge call per distinct pair
    assert stats_one == stats_two
    assert stats_one["comparisons"] == 80 and stats_one["cache_hits"] == 30
    assert stats_one["votes"]["b"] == 80
    assert sum(it["comparisons"] for it in stats_one["iterations"]) == 80


def test_a_replica_killed_mid_load_loses_nothing_it_answered(replica_settings, tmp_path):
    judge = FakeJudge(api_key=JUDGE_KEY, latency_s=0.05)
    answered: list[dict] = []
    enough = threading.Event()  # 60 verdicts are in: kill the replica under load
    with BackgroundServer(judge) as upstream:
        settings = {**replica_settings, "judge_base_url": f"{upstream.url}/v1"}
        with ServiceProcess(settings, tmp_path / "victim.log") as victim, \
                ServiceProcess(settings, tmp_path / "survivor.log") as survivor:  # fmt: skip

            def load(worker: int) -> None:
                for start in range(worker * 1000, worker * 1000 + 1000, 4):
                    try:
                        answered.extend(post(victim.url, items("load", 4, start)))
                        if len(answered) >= 60:
                            enough.set()
                    except (httpx.TransportError, AssertionError):
                        return  # the replica is gone

            threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
            for thread in threads:
                thread.start()
            assert enough.wait(WAIT_S), f"only {len(answered)} verdicts under load"
            victim.kill()
            for thread in threads:
                thread.join()
            stats = run_stats(survivor.url)
            by_id = {result["perturbation"]: result for result in answered}
            again = [i for i in items("load", 4000) if i["perturbation"] in by_id]
            replay = [
                r
                for at in range(0, len(again), 200)
                for r in post(survivor.url, again[at : at + 200])
            ]
    assert len(by_id) == len(answered)  # none duplicated
    assert all(result["cached"] for result in replay)  # every answered verdict is in the store
    assert [r["verdict"] for r in replay] == [by_id[r["perturbation"]]["verdict"] for r in replay]
    in_flight_at_kill = 4 * 4  # at most one request of 4 items per load thread
    counted_before_replay = stats["comparisons"]
    assert len(answered) <= counted_before_replay <= len(answered) + in_flight_at_kill
    assert stats["votes"]["b"] == counted_before_replay
