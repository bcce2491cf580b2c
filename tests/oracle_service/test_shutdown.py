"""SIGTERM while a judge call hangs: the process is gone within shutdown_timeout_s."""

from __future__ import annotations

import threading

import httpx

from oracle_service.testing.fake_judge import BackgroundServer
from oracle_service.testing.hostile_judge import HostileJudge
from oracle_service.testing.processes import ServiceProcess
from tests.oracle_service.conftest import JUDGE_KEY, TOKEN

SHUTDOWN_S = 1.0
HUNG_S = 120  # how long the hung judge call would hold a process that waited for it


def test_sigterm_with_a_hung_judge_call_exits_in_time(tmp_path):
    judge = HostileJudge(plan=lambda prompt: "hang")
    with BackgroundServer(judge) as upstream:
        settings = {"api_token": TOKEN, "judge_base_url": f"{upstream.url}/v1",
                    "judge_api_key": JUDGE_KEY, "db_path": tmp_path / "oracle.sqlite3",
                    "judge_timeout_s": HUNG_S, "item_deadline_s": HUNG_S,
                    "request_deadline_s": HUNG_S,
                    "shutdown_timeout_s": SHUTDOWN_S}  # fmt: skip
        replica = ServiceProcess(settings, tmp_path / "replica.log").start()
        body = {"items": [{"prompt": "p", "response_a": "x", "response_b": "yy"}]}

        def send() -> None:
            try:
                httpx.post(f"{replica.url}/v1/comparisons", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            except httpx.HTTPError:
                pass  # the replica went away: expected

        threading.Thread(target=send, daemon=True).start()
        judge.calls.wait_for(lambda calls: calls == 1)  # the judge call hangs
        took = replica.terminate()
        left = judge.calls.wait_for(lambda calls: calls == 0)  # its connection was closed
    # it did not wait for the hung call (shutdown_timeout_s, then the open request is cut;
    # the bound is far from both, so a busy machine does not fail it)
    assert took < HUNG_S / 4, took
    assert left == 0  # the hung call was closed, not left behind
