"""The service as deployed (`python -m oracle_service`, its own uvicorn and log settings): no
secret in any answer or log line, no query string in the access log, and slow clients cut
off by the header and body read timeouts."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from oracle_service.testing.fake_judge import BackgroundServer
from oracle_service.testing.hostile_judge import HostileJudge
from oracle_service.testing.processes import ServiceProcess
from tests.oracle_service.conftest import TOKEN

JUDGE_KEY = "9f86d081884c7d659a2feaa0c55ad015"  # plain hex: no pattern finds it
URL_PASSWORD = "c0ffee4d1e5e1f00d"  # a judge behind a proxy with basic auth in its URL
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
CLOSE_WAIT_S = 30.0  # a bound on waiting for the server to close (not a sleep)
POLL_S = 0.2


@dataclass
class Deployed:
    url: str
    log: Path
    http: httpx.Client

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def deploy(workdir: Path, judge_url: str, **extra: object) -> Iterator[Deployed]:
    """`python -m oracle_service` at log level debug before the judge at `judge_url`."""
    settings = {"api_token": TOKEN, "judge_api_key": JUDGE_KEY, "judge_model": "hostile",
                "judge_base_url": f"{judge_url}/v1", "db_path": workdir / "db.sqlite3",
                "log_level": "debug", "retry_max_attempts": 1, **extra}  # fmt: skip
    log = workdir / "service.log"
    with ServiceProcess(settings, log) as service:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=service.url, headers=headers, timeout=30.0) as http:
            yield Deployed(service.url, log, http)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Iterator[Deployed]:
    """The service before a judge that echoes its key, bare, with short read deadlines."""
    judge = HostileJudge(plan=lambda prompt: prompt.split(":")[0] if ":" in prompt else None)
    with BackgroundServer(judge, shutdown_s=0) as upstream:
        with deploy(tmp_path_factory.mktemp("serving"), upstream.url,
                    request_header_timeout_s=HEADER_TIMEOUT_S,
                    request_body_timeout_s=BODY_TIMEOUT_S) as service:  # fmt: skip
            yield service


def item(prompt: str) -> dict:
    return {"prompt": prompt, "response_a": "a longer answer", "response_b": "short",
            "run_id": "leaky"}  # fmt: skip


def test_a_bare_judge_key_echoed_back_reaches_no_answer_and_no_log(deployed):
    items = [item("echo_key_content: q1"), item("echo_key_error: q2"), item("fine")]
    response = deployed.http.post("/v1/comparisons", json={"items": items})
    assert response.status_code == 200
    kinds = [(r["error"] or {}).get("kind") for r in response.json()["results"]]
    assert kinds == ["malformed_output", "auth_error", None]
    messages = [r["error"]["message"] for r in response.json()["results"][:2]]
    assert all("[redacted]" in message for message in messages), messages
    seen = [response.text]
    for path in ("/v1/stats", "/v1/runs/leaky/stats", "/metrics", "/v1/runs"):
        seen.append(deployed.http.get(path).text)
    with httpx.Client(base_url=deployed.url, timeout=30.0) as browser:
        browser.post("/dashboard/login", data={"token": TOKEN})
        seen.append(browser.get("/dashboard").text)
    seen.append(deployed.log_text())
    assert '/chat/completions "HTTP/1.1 401' in seen[-1]  # the log did record these calls
    for text in seen:
        assert JUDGE_KEY not in text and TOKEN not in text


def test_a_password_in_the_judge_url_reaches_no_log(tmp_path):
    """A judge behind a proxy with basic auth in its URL: httpx logs every request's URL."""
    with BackgroundServer(HostileJudge(fault_rate=0.0), shutdown_s=0) as upstream:
        url = upstream.url.replace("://", f"://judge:{URL_PASSWORD}@")
        with deploy(tmp_path, url) as service:
            [result] = service.http.post("/v1/comparisons",
                                         json={"items": [item("q")]}).json()["results"]
            log = wait_for_log(service, '/chat/completions "HTTP/1.1 200')
    assert result["verdict"] == "a"
    assert "judge:[redacted]@127.0.0.1" in "\n".join(log)
    assert URL_PASSWORD not in "\n".join(log)


def test_the_access_log_leaves_out_query_strings(deployed):
    secret = "tok-in-a-url-5f2b1c9d8e7a"
    for path in (f"/v1/limits?token={secret}", f"/dashboard/login?token={secret}&x=1"):
        deployed.http.get(path)
    marker = f"/healthz?probe-{time.time_ns()}"
    deployed.http.get(marker)
    lines = wait_for_log(deployed, "GET /healthz?")
    assert secret not in deployed.log_text()
    assert any('"GET /v1/limits?[redacted] HTTP/1.1" 200' in line for line in lines), lines
    assert marker not in deployed.log_text()


def wait_for_log(deployed: Deployed, text: str) -> list[str]:
    """The log's lines once one holds `text` (the access log is written after the answer)."""
    deadline = time.monotonic() + CLOSE_WAIT_S
    while text not in deployed.log_text():
        assert time.monotonic() < deadline, f"no {text!r} in the log"
        time.sleep(POLL_S)
    return deployed.log_text().splitlines()


def closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; fails after CLOSE_WAIT_S."""
    sock.settimeout(POLL_S)
    received, deadline = b"", time.monotonic() + CLOSE_WAIT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open for {CLOSE_WAIT_S} s")


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)))


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow:"])
def test_a_client_that_never_finishes_its_headers_is_cut_off(deployed, sent):
    with connect(deployed.url) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        answer = closed_by_server(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") if sent else answer == b"", answer[:200]
    assert took >= HEADER_TIMEOUT_S * 0.9


def test_a_client_that_stalls_in_its_body_is_cut_off(deployed):
    body = json.dumps({"items": [item("stalled")]}).encode()
    head = (f"POST /v1/comparisons HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with connect(deployed.url) as sock:
        started = time.monotonic()
        sock.sendall(head + body[:10])  # then nothing more
        answer = closed_by_server(sock)
        took = time.monotonic() - started
    assert b"HTTP/1.1 200" not in answer, answer[:200]
    assert took >= BODY_TIMEOUT_S * 0.9
    assert deployed.http.get("/healthz").status_code == 200  # the service is fine
    log = wait_for_log(deployed, "no complete request body within request_body_timeout_s")
    assert not any("ClientDisconnect" in line for line in log)  # no traceback for it
