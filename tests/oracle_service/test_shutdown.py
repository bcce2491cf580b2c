"""SIGTERM while a judge call hangs: the process is gone within shutdown_timeout_s."""

from __future__ import annotations

import threading
import time

import httpx

from oracle_service.testing.fake_judge import BackgroundServer
from oracle_service.testing.hostile_judge import HostileJudge
from oracle_service.testing.processes import ServiceProcess
from tests.oracle_service.conftest import JUDGE_KEY, TOKEN

SHUTDOWN_S = 1.0
SLACK_S = 3.0  # closing the store and the judge clients, process exit


def test_sigterm_with_a_hung_judge_call_exits_in_time(tmp_path):
    judge = HostileJudge(plan=lambda prompt: "hang")
    with BackgroundServer(judge) as upstream:
        settings = {"api_token": TOKEN, "judge_base_url": f"{upstream.url}/v1",
                    "judge_api_key": JUDGE_KEY, "db_path": tmp_path / "oracle.sqlite3",
                    "judge_timeout_s": 120, "item_deadline_s": 120, "request_deadline_s": 120,
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
        while judge.in_flight == 0:
            time.sleep(0.05)
        took = replica.terminate()
        deadline = time.monotonic() + 5.0
        while judge.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
    assert took < SHUTDOWN_S + SLACK_S, took
    assert judge.in_flight == 0  # the hung call was closed, not left behind
