"""A fake OpenAI-compatible judge (POST /v1/chat/completions) for tests, benchmarks and dev.

It speaks the real wire format, so the real `openai` client can talk to it. Replies can be
scripted (errors, delays, bad output) or decided by a rule on the two responses shown.
`python -m oracle_service.testing.fake_judge --port 8001 --latency 0.2` runs it standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn

CHARS_PER_TOKEN = 4  # the fake's crude usage count
Decide = Callable[[str, str, str], str]  # (prompt, shown first, shown second) -> A/B/TIE
SHOWN_PAIR = re.compile(
    r"\[Prompt\]\n(?P<prompt>.*)\n\n\[Response A\]\n(?P<a>.*)\n\n\[Response B\]\n(?P<b>.*)\n\n",
    re.DOTALL,
)


def prefer_longer(prompt: str, first: str, second: str) -> str:
    """A position-consistent judge: the longer response wins."""
    if len(first) == len(second):
        return "TIE"
    return "A" if len(first) > len(second) else "B"


def always_first(prompt: str, first: str, second: str) -> str:
    """A fully position-biased judge."""
    return "A"


WAIT_S = 120.0  # how long a test waits for calls to arrive before it fails


class CallCount:
    """Calls being answered now and the most at once. Another thread (a test) can wait for
    a count, and `hold_until(n)` makes calls wait until n are in flight together, so that a
    concurrency limit is reached however slow the machine is."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self._changed = threading.Condition()
        self._hold: int | None = None
        self._gate: asyncio.Event | None = None  # made in the server's event loop

    def hold_until(self, calls: int | None) -> None:
        """From now on calls wait until `calls` are in flight (None: they never wait)."""
        self._hold, self._gate = calls, None

    async def enter(self) -> None:
        with self._changed:
            self.now += 1
            self.most = max(self.most, self.now)
            self._changed.notify_all()
        if self._hold is not None:
            self._gate = self._gate or asyncio.Event()
            if self.now >= self._hold:
                self._gate.set()  # stays open: later calls pass
            await self._gate.wait()

    def leave(self) -> None:
        with self._changed:
            self.now -= 1
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[int], bool], timeout_s: float = WAIT_S) -> int:
        """Block until condition(calls in flight) holds; the count, or AssertionError."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.now), timeout_s):
                raise AssertionError(f"{self.now} calls in flight after {timeout_s:g} s")
            return self.now


@dataclass
class FakeReply:
    """One scripted reply: an error status, a literal content, and/or a delay first."""

    status: int = 200
    content: str | None = None  # None: decided by the rule
    error_code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class SeenRequest:
    at: float
    body: dict[str, Any]
    shown: tuple[str, str] | None  # (first, second) as shown to the judge


class FakeJudge:
    """ASGI app. Thread-safe enough for tests: the server thread appends, tests read."""

    def __init__(
        self,
        decide: Decide = prefer_longer,
        *,
        latency_s: float = 0.0,
        confidence: float = 0.9,
        api_key: str | None = None,
        fault_rate: float = 0.0,
        fault_replies: Sequence[FakeReply] = (),
        seed: int = 0,
    ) -> None:
        self.decide = decide
        self.latency_s = latency_s
        self.confidence = confidence
        self.api_key = api_key
        self.fault_rate = fault_rate
        self.fault_replies = list(fault_replies)
        self.script: deque[FakeReply] = deque()
        self.requests: list[SeenRequest] = []
        self.calls = CallCount()
        self._random = random.Random(seed)

    def enqueue(self, *replies: FakeReply) -> None:
        """Replies used, in order, by the next requests (before the rule applies)."""
        self.script.extend(replies)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if (scope["method"], scope["path"]) == ("GET", "/v1/models"):
            await self._models(scope, send)
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await _send_json(send, 404, {"error": {"message": "not found", "type": "invalid"}})
            return
        try:
            await self.calls.enter()
            status, payload, headers = await self._answer(scope, json.loads(body))
        finally:
            self.calls.leave()
        await _send_json(send, status, payload, headers)

    @property
    def in_flight(self) -> int:
        return self.calls.now

    @property
    def max_in_flight(self) -> int:
        return self.calls.most

    async def _answer(self, scope: dict, request: dict) -> tuple[int, dict, dict[str, str]]:
        user = next(m["content"] for m in request["messages"] if m["role"] == "user")
        match = SHOWN_PAIR.search(user)
        shown = (match["a"], match["b"]) if match else None
        self.requests.append(SeenRequest(time.monotonic(), request, shown))
        reply = self._next_reply()
        await asyncio.sleep(self.latency_s + reply.delay_s)
        headers = dict(reply.headers)
        if not self._authorised(scope):
            return 401, _error("Incorrect API key provided.", "invalid_api_key"), headers
        if reply.status != 200:
            message = f"scripted HTTP {reply.status}"
            return reply.status, _error(message, reply.error_code), headers
        if reply.content is not None:
            return 200, self._completion(request, reply.content), headers
        prompt = match["prompt"] if match else user
        choice = self.decide(prompt, *(shown or ("", "")))
        return 200, self._completion(request, choice, decided=True), headers

    async def _models(self, scope: dict, send: Callable) -> None:
        """GET /v1/models: the one model (no tokens; a wrong key is a 401 as for completions)."""
        if not self._authorised(scope):
            await _send_json(send, 401, _error("Incorrect API key provided.", "invalid_api_key"))
            return
        model = {"id": "fake-judge", "object": "model", "created": 0, "owned_by": "compo"}
        await _send_json(send, 200, {"object": "list", "data": [model]})

    def _next_reply(self) -> FakeReply:
        if self.script:
            return self.script.popleft()
        if self.fault_replies and self._random.random() < self.fault_rate:
            return self._random.choice(self.fault_replies)
        return FakeReply()

    def _authorised(self, scope: dict) -> bool:
        if self.api_key is None:
            return True
        headers = dict(scope["headers"])
        return headers.get(b"authorization", b"").decode() == f"Bearer {self.api_key}"

    def _completion(self, request: dict, content: str, decided: bool = False) -> dict[str, Any]:
        """A chat.completion; a decided choice is formatted as asked (token or JSON)."""
        choice = content
        if decided and (request.get("response_format") or {}).get("type") == "json_object":
            content = json.dumps({"winner": choice})
        logprobs = None
        if decided and request.get("logprobs") and choice in ("A", "B"):
            other = "B" if choice == "A" else "A"
            top = [_logprob(choice, self.confidence), _logprob(other, 1.0 - self.confidence)]
            logprobs = {"content": [{**top[0], "top_logprobs": top}], "refusal": None}
        return completion_body(request, content, logprobs)


def completion_body(request: dict, content: object, logprobs: dict | None = None) -> dict:
    """A well-formed chat.completion answering `request` with `content`."""
    prompt_tokens = len(json.dumps(request["messages"])) // CHARS_PER_TOKEN
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 1,
            "total_tokens": prompt_tokens + 1,
        },
    }


def _logprob(token: str, probability: float) -> dict[str, Any]:
    return {"token": token, "logprob": math.log(probability), "bytes": list(token.encode())}


def _error(message: str, code: str | None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": code or "server_error", "param": None, "code": code}
    }


async def read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Callable, status: int, payload: dict, headers: dict | None = None):
    body = json.dumps(payload).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class BackgroundServer:
    """Runs an ASGI app with uvicorn on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(self, app: Any, *, start_timeout_s: float = 30.0, shutdown_s: int = 1) -> None:
        self.app = app
        self.start_timeout_s = start_timeout_s
        self.shutdown_s = shutdown_s
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", timeout_graceful_shutdown=self.shutdown_s
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server for {self.app!r} failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Graceful shutdown; forced if requests are still running after `shutdown_s`."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=self.shutdown_s + self.start_timeout_s)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible judge (prefers longer)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of faulty replies")
    parser.add_argument("--fault-timeout-s", type=float, default=5.0, help="delay of a hang fault")
    args = parser.parse_args(argv)
    faults = [
        FakeReply(status=429, headers={"Retry-After": "1"}),
        FakeReply(status=500),
        FakeReply(content="I cannot decide."),
        FakeReply(delay_s=args.fault_timeout_s),
    ]
    judge = FakeJudge(latency_s=args.latency, fault_rate=args.fault_rate, fault_replies=faults)
    uvicorn.run(judge, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
