"""The LLM-judge backend against a fake OpenAI-compatible server, through the real openai client."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Sequence

import httpx2
import pytest

from oracle_service.backends import judge as judge_module
from oracle_service.backends.base import Verdict
from oracle_service.backends.judge import JudgeBackend
from oracle_service.backends.judge_http import BoundedTransport
from oracle_service.core.settings import Settings
from oracle_service.schemas import ComparisonItem, ErrorKind, VerdictLabel
from oracle_service.testing.fake_judge import BackgroundServer, FakeReply
from oracle_service.testing.hostile_judge import HostileJudge

LONG, SHORT = "a long and detailed answer", "short"
HANG_S = 60.0  # a judge reply that never comes in time (the tests cut it far sooner)


def run_judge(settings: Settings, items: Sequence[ComparisonItem]) -> list[Verdict]:
    async def go() -> list[Verdict]:
        backend = JudgeBackend(settings)
        try:
            return await backend.compare(items)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def one(prompt: str = "Explain caching.", a: str = LONG, b: str = SHORT) -> ComparisonItem:
    return ComparisonItem(prompt=prompt, response_a=a, response_b=b)


def assert_abstained(verdict: Verdict, kind: ErrorKind) -> None:
    assert verdict.label is VerdictLabel.ABSTAIN
    assert verdict.probability is None
    assert verdict.error is not None and verdict.error.kind is kind


def test_verdicts_and_probabilities_map_back_through_the_order_swap(make_settings, fake_judge):
    items = [one(f"prompt {i}", LONG, SHORT) for i in range(6)]
    items += [one(f"prompt {i}", SHORT, LONG) for i in range(6, 12)]
    verdicts = run_judge(make_settings(judge_logprobs=True), items)

    expected = [VerdictLabel.A] * 6 + [VerdictLabel.B] * 6
    assert [v.label for v in verdicts] == expected
    assert [round(v.probability, 6) for v in verdicts] == [0.9] * 6 + [0.1] * 6
    shown_long_first = [r.shown[0] == LONG for r in fake_judge.judge.requests]
    assert any(shown_long_first) and not all(shown_long_first)  # both orders were used
    assert all(v.prompt_tokens > 0 and v.completion_tokens == 1 for v in verdicts)


def test_json_output_format(make_settings, fake_judge):
    [verdict] = run_judge(make_settings(judge_output_format="json"), [one(a=SHORT, b=LONG)])
    assert verdict.label is VerdictLabel.B
    [request] = fake_judge.judge.requests
    assert request.body["response_format"] == {"type": "json_object"}


def test_retry_after_is_honoured_without_multiplied_attempts(make_settings, fake_judge):
    fake_judge.judge.enqueue(FakeReply(status=429, headers={"Retry-After": "1"}))
    [verdict] = run_judge(make_settings(retry_initial_wait_s=0.01), [one()])

    assert verdict.label is VerdictLabel.A
    first, second = fake_judge.judge.requests  # exactly two attempts: no hidden client retries
    assert second.at - first.at >= 0.95  # the second waited the 1 s asked for


def test_server_errors_retry_then_succeed(make_settings, fake_judge):
    fake_judge.judge.enqueue(FakeReply(status=500), FakeReply(status=503))
    [verdict] = run_judge(make_settings(retry_max_attempts=3), [one()])
    assert verdict.label is VerdictLabel.A
    assert len(fake_judge.judge.requests) == 3


def test_server_errors_exhaust_retries_into_an_abstention(make_settings, fake_judge):
    fake_judge.judge.enqueue(*[FakeReply(status=500)] * 3)
    [verdict] = run_judge(make_settings(retry_max_attempts=3), [one()])
    assert_abstained(verdict, ErrorKind.SERVER_ERROR)
    assert "500" in verdict.error.message
    assert len(fake_judge.judge.requests) == 3


def test_timeouts_retry_then_abstain(make_settings, fake_judge):
    fake_judge.judge.enqueue(FakeReply(delay_s=HANG_S), FakeReply(delay_s=HANG_S))
    settings = make_settings(judge_timeout_s=0.3, retry_max_attempts=2)
    started = time.monotonic()
    [verdict] = run_judge(settings, [one()])
    assert_abstained(verdict, ErrorKind.TIMEOUT)
    assert len(fake_judge.judge.requests) == 2
    assert time.monotonic() - started < HANG_S / 2  # both calls were cut, not waited for


def test_malformed_output_abstains_and_is_not_retried(make_settings, fake_judge):
    fake_judge.judge.enqueue(FakeReply(content="Response A is clearly better."))
    [verdict] = run_judge(make_settings(), [one()])
    assert_abstained(verdict, ErrorKind.MALFORMED_OUTPUT)
    assert "Response A is clearly better." in verdict.error.message
    assert len(fake_judge.judge.requests) == 1


def test_malformed_json_output_abstains(make_settings, fake_judge):
    fake_judge.judge.enqueue(FakeReply(content='{"winner": "first"}'), FakeReply(content="A"))
    verdicts = run_judge(make_settings(judge_output_format="json"), [one("p1"), one("p2")])
    for verdict in verdicts:
        assert_abstained(verdict, ErrorKind.MALFORMED_OUTPUT)


@pytest.mark.parametrize(
    ("reply", "api_key", "kind"),
    [
        (None, "sk-wrong-key", ErrorKind.AUTH_ERROR),
        (FakeReply(status=400), None, ErrorKind.BAD_REQUEST),
        (
            FakeReply(status=429, error_code="insufficient_quota"),
            None,
            ErrorKind.INSUFFICIENT_QUOTA,
        ),
    ],
)
def test_non_retryable_errors_fail_fast(make_settings, fake_judge, reply, api_key, kind):
    if reply is not None:
        fake_judge.judge.enqueue(reply)
    overrides = {"judge_api_key": api_key} if api_key else {}
    [verdict] = run_judge(make_settings(retry_max_attempts=5, **overrides), [one()])
    assert_abstained(verdict, kind)
    assert len(fake_judge.judge.requests) == 1


def test_concurrency_is_bounded(make_settings, fake_judge):
    fake_judge.judge.calls.hold_until(3)  # calls wait until 3 are in flight together
    items = [one(f"prompt {i}") for i in range(12)]
    verdicts = run_judge(make_settings(judge_max_concurrency=3), items)
    assert all(v.label is VerdictLabel.A for v in verdicts)
    assert fake_judge.judge.max_in_flight == 3


def test_requests_per_minute_limit_spaces_calls(make_settings, fake_judge):
    settings = make_settings(judge_requests_per_minute=600, rate_limit_burst_s=0.1)  # 10/s, burst 1
    run_judge(settings, [one(f"prompt {i}") for i in range(5)])
    arrivals = sorted(r.at for r in fake_judge.judge.requests)
    assert len(arrivals) == 5
    # 4 gaps of 0.1 s (unlimited: ~0.01 s); the bucket's exact pacing: core/test_batching.py
    assert arrivals[-1] - arrivals[0] >= 0.35


def test_a_bug_abstains_as_internal_error_and_is_logged_once_with_its_traceback(
        make_settings, fake_judge, monkeypatch, caplog):
    def broken_template(*args: object) -> str:
        raise ZeroDivisionError("a bug in the service")

    monkeypatch.setattr(judge_module, "render_template", broken_template)
    [verdict] = run_judge(make_settings(judge_position_mode="both"), [one()])
    assert_abstained(verdict, ErrorKind.INTERNAL_ERROR)
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(logged) == 1 and logged[0].levelname == "ERROR"
    assert "see the service log" in verdict.error.message


def test_error_bodies_are_cut_to_judge_max_kept_bytes_on_the_wire(make_settings):
    """Of a 900 KB error body only judge_max_kept_bytes are read; a 2xx body is whole."""
    judge = HostileJudge(plan=lambda prompt: prompt or None, huge_error_bytes=900_000)
    kept = 2048
    with BackgroundServer(judge) as upstream:
        async def fetch(prompt: str) -> httpx2.Response:
            transport = BoundedTransport(limit=1024 * 1024, kept=kept)
            async with httpx2.AsyncClient(transport=transport) as client:
                user = f"[Prompt]\n{prompt}\n\n[Response A]\nx\n\n[Response B]\nyy\n\n"
                body = {"model": "m", "messages": [{"role": "user", "content": user}]}
                return await client.post(f"{upstream.url}/v1/chat/completions", json=body)

        error, good = asyncio.run(fetch("huge_error")), asyncio.run(fetch(""))
    assert error.status_code == 500 and len(error.content) == kept
    assert error.content.startswith(b'{"error": {"message": "internal error; trace follows')
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"] == "B"


def test_a_reply_nested_400k_deep_is_an_invalid_response(make_settings):
    judge = HostileJudge(plan=lambda prompt: "deep_json")
    with BackgroundServer(judge) as upstream:
        settings = make_settings(judge_base_url=f"{upstream.url}/v1")
        [verdict] = run_judge(settings, [one()])
    assert_abstained(verdict, ErrorKind.INVALID_RESPONSE)
    assert "deeper than" in verdict.error.message


def test_a_bad_reply_is_not_kept_alive_by_its_error(make_settings):
    """48 replies of 1 MB that are not completions: once the items have abstained, none is
    held (not even by a reference cycle waiting for the garbage collector)."""
    judge = HostileJudge(plan=lambda prompt: "huge_error", huge_error_bytes=1024 * 1024,
                         huge_error_status=200)  # fmt: skip
    with BackgroundServer(judge) as upstream:
        settings = make_settings(judge_base_url=f"{upstream.url}/v1", judge_max_concurrency=4,
                                 judge_max_response_bytes=2 * 1024 * 1024)  # fmt: skip
        items = [one(f"prompt {i}") for i in range(48)]
        gc.disable()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            verdicts = run_judge(settings, items)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            gc.enable()
    assert all(v.error is not None and v.error.kind is ErrorKind.INVALID_RESPONSE
               for v in verdicts)  # fmt: skip
    assert held < 8 * 1024 * 1024, f"{held / 2**20:.0f} MiB still held"  # 48 MiB if kept
