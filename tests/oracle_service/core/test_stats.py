"""Stats endpoints reflect the comparisons made."""

from __future__ import annotations

import pytest

from oracle_service.testing.fake_judge import FakeReply

LONG, SHORT = "a long and detailed answer", "short"


def item(prompt: str, a: str, b: str, **extra: object) -> dict:
    return {"prompt": prompt, "response_a": a, "response_b": b, **extra}


def judge_rule(prompt: str, first: str, second: str) -> str:
    """Prefers the longer response, but answers garbage for prompt 'p3'."""
    if prompt == "p3":
        return "garbage"
    return "A" if len(first) > len(second) else "B"


def test_run_and_iteration_stats(make_settings, running_service, post_compare, fake_judge):
    fake_judge.judge.decide = judge_rule
    settings = make_settings(
        judge_input_usd_per_mtok=1.0, judge_output_usd_per_mtok=4.0, retry_max_attempts=1
    )
    it0 = [
        item("p0", LONG, SHORT, run_id="r1", iteration=0),
        item("p1", SHORT, LONG, run_id="r1", iteration=0),
        item("p2", "same", "same", run_id="r1", iteration=0),
        item("p3", LONG, SHORT, run_id="r1", iteration=0),
    ]
    failing = [item("p4", LONG, SHORT, run_id="r1", iteration=0)]
    it1 = [item("p0", SHORT, LONG, run_id="r1", iteration=1)]  # cached from iteration 0
    other = [item("q", LONG, SHORT)]  # no run id: the "default" run
    with running_service(settings) as http:
        results = post_compare(http, it0)
        fake_judge.judge.enqueue(FakeReply(status=500))
        results += post_compare(http, failing)
        results += post_compare(http, it1)
        post_compare(http, other)
        run = http.get("/v1/runs/r1/stats").json()
        total = http.get("/v1/stats").json()
        missing = http.get("/v1/runs/nope/stats")

    verdicts = [r["verdict"] for r in results]
    assert verdicts == ["a", "b", "tie", "abstain", "abstain", "b"]
    assert results[3]["error"]["kind"] == "malformed_output"
    assert results[4]["error"]["kind"] == "server_error"
    assert results[5]["cached"] is True

    it0_stats, it1_stats = run["iterations"]
    assert (it0_stats["iteration"], it1_stats["iteration"]) == (0, 1)
    assert it0_stats["comparisons"] == 5
    assert it0_stats["votes"] == {"a": 1, "b": 1, "tie": 1, "abstain": 2}
    assert it0_stats["errors"] == {"malformed_output": 1, "server_error": 1}
    assert it0_stats["cache_hits"] == 0
    assert 0 < it0_stats["latency_ms_p50"] <= it0_stats["latency_ms_p95"]
    assert it1_stats["votes"]["b"] == 1 and it1_stats["cache_hit_rate"] == 1.0

    assert run["comparisons"] == 6
    assert run["cache_hits"] == 1
    assert run["cache_hit_rate"] == pytest.approx(1 / 6)
    assert run["prompt_tokens"] > 0 and run["completion_tokens"] == 3  # p0, p1, p3 answered
    expected_cost = (run["prompt_tokens"] * 1.0 + run["completion_tokens"] * 4.0) / 1e6
    assert run["cost_usd"] == pytest.approx(expected_cost)

    assert total["comparisons"] == 7
    assert set(total["runs"]) == {"r1", "default"}
    assert total["runs"]["default"]["votes"]["a"] == 1
    assert total["errors"] == {"malformed_output": 1, "server_error": 1}
    assert missing.status_code == 404


def test_cache_hit_rate_and_error_kinds(make_settings, running_service, post_compare, fake_judge):
    fake_judge.judge.enqueue(FakeReply(content="maybe"))
    batch = [item(f"p{i}", LONG, SHORT, run_id="r2") for i in range(4)]
    with running_service(make_settings(judge_max_concurrency=1)) as http:
        post_compare(http, batch)
        post_compare(http, batch)
        stats = http.get("/v1/runs/r2/stats").json()
    assert stats["comparisons"] == 8
    assert stats["votes"] == {"a": 7, "b": 0, "tie": 0, "abstain": 1}
    assert stats["errors"] == {"malformed_output": 1}
    assert stats["cache_hits"] == 3
    assert stats["cache_hit_rate"] == pytest.approx(3 / 8)
    assert stats["iterations"] == []


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_stats_survive_a_restart(make_settings, running_service, post_compare, fake_judge,
                                 request, store):  # fmt: skip
    fake_judge.judge.decide = judge_rule  # p3 is malformed: errors are counted too
    shared = {"store_url": request.getfixturevalue("postgres_url")} if store == "postgres" else {}
    settings = make_settings(retry_max_attempts=1, **shared)
    items = [item(f"p{i}", LONG, SHORT, run_id="kept", iteration=i % 2) for i in range(5)]
    with running_service(settings) as http:
        post_compare(http, items)
        post_compare(http, items[:2])  # cache hits
        before = (http.get("/v1/stats").json(), http.get("/v1/runs/kept/stats").json())
    with running_service(settings) as http:
        after = (http.get("/v1/stats").json(), http.get("/v1/runs/kept/stats").json())
    assert before == after
    run = after[1]
    assert run["comparisons"] == 7 and run["cache_hits"] == 2
    assert run["votes"] == {"a": 6, "b": 0, "tie": 0, "abstain": 1}
    assert run["errors"] == {"malformed_output": 1}
    assert [it["comparisons"] for it in run["iterations"]] == [4, 3]
