"""The real service, through the real openai client, against a hostile judge (25 kinds of bad
replies): every item keeps its own answer, nothing is lost, no failure reads as a verdict,
and the judge's key never comes back, even bare (plain hex, no `Bearer` or `sk-` to spot)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import httpx

from oracle_service.core.settings import Settings
from oracle_service.main import create_app
from oracle_service.schemas import MAX_ERROR_CHARS
from oracle_service.testing.fake_judge import BackgroundServer
from oracle_service.testing.hostile_judge import (
    KINDS,
    NOT_A_COMPLETION,
    HostileJudge,
    HostileTiming,
)
from tests.oracle_service.conftest import TOKEN

JUDGE_KEY = "62300af6c1d94e0b8a7f35e2d4c6b9a1"  # plain hex: no pattern finds it
# What each fault must become when every call for the item gets it (retries included).
EXPECTED_KIND = {kind: "invalid_response" for kind in NOT_A_COMPLETION} | {
    "huge_content": "malformed_output",
    "retry_after_huge": "rate_limited",
    "retry_after_garbage": "server_error",
    "trickle": "timeout",
    "hang": "timeout",
    "echo_authorization": "auth_error",
    "huge_error": "server_error",
    "connection_reset": "connection_error",
    "redirect_loop": "connection_error",
    "echo_key_content": "malformed_output",
    "echo_key_error": "auth_error",
}
FAST = HostileTiming(retry_after_delay_s=0.3, trickle_interval_s=0.2, hang_s=120.0)
CALL_S = 5.0  # judge_timeout_s: cuts hangs and trickles, and leaves a good reply time on a
#              busy machine (a good reply cut by it would read as a fault)


def hostile_settings(judge_url: str, tmp_path, **overrides) -> Settings:
    values = {
        "api_token": TOKEN,
        "judge_base_url": f"{judge_url}/v1",
        "judge_api_key": JUDGE_KEY,
        "judge_model": "hostile",
        "db_path": tmp_path / "hostile.sqlite3",
        "retry_max_attempts": 3,
        "retry_initial_wait_s": 0.01,
        "retry_max_wait_s": 0.05,
        "retry_jitter_s": 0.0,
        "judge_timeout_s": CALL_S,
        "item_deadline_s": 4 * CALL_S,  # 3 attempts cut at judge_timeout_s fit
        "request_deadline_s": 5 * CALL_S,
    }
    return Settings(**{**values, **overrides})


def item(prompt: str, index: int, run_id: str = "hostile") -> dict:
    """The longer response wins; which side it is on alternates."""
    long, short = f"a long, detailed answer number {index}", f"short {index}"
    a, b = (long, short) if index % 2 else (short, long)
    return {"prompt": prompt, "response_a": a, "response_b": b, "run_id": run_id,
            "iteration": index % 3, "perturbation": index}  # fmt: skip


def expected_verdict(sent: dict) -> str:
    return "a" if len(sent["response_a"]) > len(sent["response_b"]) else "b"


def client(url: str, timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout)


def test_every_kind_of_bad_reply_abstains_alone_and_its_siblings_are_kept(tmp_path):
    judge = HostileJudge(timing=FAST, plan=lambda prompt: prompt.split(":")[0] if ":" in prompt
                         else None)  # fmt: skip
    bad = [item(f"{kind}: question {i}", i) for i, kind in enumerate(KINDS)]
    good = [item(f"good question {i}", 100 + i) for i in range(len(KINDS))]
    batch = [entry for pair in zip(bad, good, strict=True) for entry in pair]
    with BackgroundServer(judge) as upstream:
        settings = hostile_settings(upstream.url, tmp_path)
        with BackgroundServer(create_app(settings)) as service, client(service.url) as http:
            started = time.monotonic()
            response = http.post("/v1/comparisons", json={"items": batch})
            elapsed = time.monotonic() - started
            again = http.post("/v1/comparisons", json={"items": good}).json()["results"]
            stats = http.get("/v1/runs/hostile/stats").json()
    assert response.status_code == 200, response.text[:500]
    assert JUDGE_KEY not in response.text and TOKEN not in response.text
    results = response.json()["results"]
    assert [r["perturbation"] for r in results] == [sent["perturbation"] for sent in batch]
    for sent, result in zip(batch, results, strict=True):
        kind = sent["prompt"].split(":")[0]
        if kind in EXPECTED_KIND:
            assert result["verdict"] == "abstain", kind
            assert result["error"]["kind"] == EXPECTED_KIND[kind], (kind, result["error"])
            assert len(result["error"]["message"]) <= MAX_ERROR_CHARS
        else:
            assert result["verdict"] == expected_verdict(sent) and result["error"] is None
    assert "[redacted]" in next(r for s, r in zip(batch, results, strict=True)
                                if s["prompt"].startswith("echo_authorization"))["error"]["message"]
    assert elapsed < FAST.hang_s / 2  # the hung and trickled calls were cut, not waited for
    assert all(r["cached"] and r["verdict"] == expected_verdict(s)
               for s, r in zip(good, again, strict=True))  # fmt: skip
    assert stats["comparisons"] == len(batch) + len(good)
    assert stats["votes"]["abstain"] == len(KINDS) == sum(stats["errors"].values())
    assert stats["cache_hits"] == len(good)


def fire(url: str, items: list[dict], clients: int, batch: int) -> list[tuple[dict, dict]]:
    """`clients` threads sending their share in requests of `batch` items; (sent, result)."""
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]

    def send(chunk: list[dict]) -> list[tuple[dict, dict]]:
        with client(url) as http:
            response = http.post("/v1/comparisons", json={"items": chunk})
        assert response.status_code == 200, response.text[:300]
        return list(zip(chunk, response.json()["results"], strict=True))

    with ThreadPoolExecutor(clients) as pool:
        return [pair for answered in pool.map(send, batches) for pair in answered]


def post_quietly(url: str, body: dict) -> None:
    """POST and ignore the outcome (for requests a test leaves hanging)."""
    try:
        with client(url) as http:
            http.post("/v1/comparisons", json=body)
    except httpx.HTTPError:
        pass


def check_fault_run(judge: HostileJudge, items: list[dict], answered, stats: dict) -> Counter:
    """0 lost, 0 duplicated, a verdict only where the judge gave a good reply, stats agree."""
    seen = Counter(result["perturbation"] for _, result in answered)
    assert set(seen) == {sent["perturbation"] for sent in items} and max(seen.values()) == 1
    outcomes = judge.outcomes()
    verdicts: Counter[str] = Counter()
    for sent, result in answered:
        served = outcomes[sent["prompt"]]
        verdicts[result["verdict"]] += 1
        if result["verdict"] == "abstain":  # after a fault, or a good reply read too late
            late = result["error"]["kind"] in ("timeout", "deadline_exceeded")
            assert served[-1] != "good" or late, (served, result)
        else:
            assert served[-1] == "good" and result["error"] is None, (served, result)
            assert result["verdict"] == expected_verdict(sent)
    assert stats["comparisons"] == len(items)
    assert {k: v for k, v in stats["votes"].items() if v} == dict(verdicts)
    return verdicts


def test_fault_run_loses_nothing_and_never_reads_a_failure_as_a_verdict(tmp_path):
    """20% of calls get a fault of any kind; retries recover the retryable ones."""
    judge = HostileJudge(fault_rate=0.2, timing=FAST, seed=97)  # its first 240 draws: every kind
    items = [item(f"fault run question {i}", i, run_id="fault-run") for i in range(240)]
    with BackgroundServer(judge) as upstream:
        settings = hostile_settings(upstream.url, tmp_path)
        with BackgroundServer(create_app(settings)) as service, client(service.url) as http:
            answered = fire(service.url, items, clients=10, batch=8)
            stats = http.get("/v1/runs/fault-run/stats").json()
    verdicts = check_fault_run(judge, items, answered, stats)
    assert verdicts["abstain"] > 0 and verdicts["a"] + verdicts["b"] > len(items) // 2
    assert {call.kind for call in judge.served} == {"good", *KINDS}  # every kind was served


def test_retry_after_and_trickle_are_bounded_by_the_deadline(tmp_path):
    """A 429 asking for an hour, and a reply trickling in a byte at a time, end in time.
    The bounds are far from both the fast path and the slow one (waiting until the
    deadline; a whole trickle ~60 s; 20 attempts of judge_timeout_s = 40 s)."""
    timing = HostileTiming(retry_after_delay_s=0.0, trickle_interval_s=0.2)
    judge = HostileJudge(timing=timing, plan=lambda prompt: prompt.split(":")[0])
    with BackgroundServer(judge) as upstream:
        settings = hostile_settings(upstream.url, tmp_path, retry_max_attempts=20,
                                    item_deadline_s=40.0, request_deadline_s=45.0)
        with BackgroundServer(create_app(settings)) as service, client(service.url) as http:
            started = time.monotonic()
            [result] = http.post("/v1/comparisons", json={"items": [
                item("retry_after_huge: q", 1)]}).json()["results"]  # fmt: skip
            took = time.monotonic() - started
    assert result["verdict"] == "abstain", result
    assert len(judge.outcomes()["retry_after_huge: q"]) == 1  # one call, no retry
    assert took < settings.item_deadline_s / 2  # no wait for an hour, nor to the deadline
    with BackgroundServer(judge) as upstream:
        settings = hostile_settings(upstream.url, tmp_path, retry_max_attempts=20,
                                    judge_timeout_s=2.0, item_deadline_s=3.0,
                                    request_deadline_s=4.0)  # fmt: skip
        with BackgroundServer(create_app(settings)) as service, client(service.url) as http:
            started = time.monotonic()
            [result] = http.post("/v1/comparisons",
                                 json={"items": [item("trickle: q", 1)]}).json()["results"]
            took = time.monotonic() - started
    assert result["verdict"] == "abstain", result
    # each attempt is cut at judge_timeout_s, then the item's deadline ends the retries
    assert settings.judge_timeout_s < took < 20.0


def test_hung_calls_leave_their_slots_to_healthy_items(tmp_path):
    judge = HostileJudge(plan=lambda prompt: "hang" if prompt.startswith("hang") else None)
    with BackgroundServer(judge) as upstream:
        settings = hostile_settings(upstream.url, tmp_path, judge_max_concurrency=4,
                                    judge_slow_call_s=0.3, judge_max_slow_calls=64,
                                    judge_timeout_s=20.0, item_deadline_s=20.0,
                                    request_deadline_s=25.0)  # fmt: skip
        with BackgroundServer(create_app(settings), shutdown_s=0) as service:
            for start in range(0, 16, 4):  # 16 hung items in 4 requests, left hanging
                hung = {"items": [item(f"hang {i}", i) for i in range(start, start + 4)]}
                threading.Thread(target=post_quietly, args=(service.url, hung), daemon=True).start()
            judge.calls.wait_for(lambda calls: calls >= 4)  # the regular slots are taken
            with client(service.url) as http:
                started = time.monotonic()
                [result] = http.post("/v1/comparisons",
                                     json={"items": [item("healthy", 1)]}).json()["results"]
                took = time.monotonic() - started
            hanging = judge.calls.wait_for(lambda calls: calls == 16)
    # item 1: response_a is the longer one; without slow slots it would wait judge_timeout_s
    assert result["verdict"] == "a" and took < settings.judge_timeout_s / 2
    assert hanging == 16  # all hung calls in flight together, in slow slots


def test_a_client_that_goes_away_cancels_its_judge_calls(tmp_path):
    judge = HostileJudge(plan=lambda prompt: "hang")
    with BackgroundServer(judge) as upstream:
        settings = hostile_settings(upstream.url, tmp_path, judge_timeout_s=30.0,
                                    item_deadline_s=30.0, request_deadline_s=30.0)  # fmt: skip
        with BackgroundServer(create_app(settings)) as service:
            body = json.dumps({"items": [item(f"q{i}", i) for i in range(3)]})
            going = HTTPConnection("127.0.0.1", service.port)
            going.request("POST", "/v1/comparisons", body, {
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            judge.calls.wait_for(lambda calls: calls == 3)  # the judge is asked
            going.close()  # the client goes away
            left = judge.calls.wait_for(lambda calls: calls == 0)
            with client(service.url) as http:
                stats = http.get("/v1/stats").json()
    assert left == 0  # the judge saw every call closed
    assert stats["comparisons"] == 0  # nothing was answered, nothing counted
