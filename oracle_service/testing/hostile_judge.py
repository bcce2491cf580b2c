"""A hostile OpenAI-compatible judge: 25 kinds of bad replies on POST /v1/chat/completions.

Unlike the fake judge (`fake_judge.py`, well-formed replies with scripted errors), this one
breaks the wire protocol the ways real upstreams and proxies do: bodies that are not
completions (one nested 400,000 deep), lying headers, byte trickles, hangs, resets, echoed
credentials (after a `Bearer`, or bare where no pattern can spot them), huge bodies.
A share `fault_rate` of calls gets a fault (drawn from `kinds`); the rest get a good reply
decided by `prefer_longer`. Every call is logged with what it got, so tests can check
that no verdict ever came from a fault.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from oracle_service.testing.fake_judge import (
    SHOWN_PAIR,
    CallCount,
    completion_body,
    lifespan,
    prefer_longer,
    read_body,
)

Send = Callable[[dict], object]
HUGE_RETRY_AFTER_S = 3600
HUGE_ERROR_CHARS = 200_000  # the size of the error bodies that used to reach clients
HUGE_ERROR_HEAD = "internal error; trace follows: "
HUGE_CONTENT_CHARS = 200_000  # a "verdict" far longer than A, B or TIE
OVERSIZED_BODY_BYTES = 12 * 1024 * 1024  # beyond any sane completion
RESET_AFTER_BYTES = 10
DEEP_NESTING = 400_000  # levels of [[[...]]]: 800 KB, under the 1 MiB read cap

# Bodies that are not a well-formed chat completion.
NOT_A_COMPLETION = (
    "malformed_json", "html_200", "empty_200", "json_array", "non_string_content",
    "content_parts", "string_usage", "negative_usage", "no_message", "empty_choices",
    "no_choices", "bad_logprobs", "oversized_body", "deep_json",
)  # fmt: skip
# Protocol-level trouble: status codes, headers, timing, connections.
TRANSPORT = (
    "huge_content", "retry_after_huge", "retry_after_garbage", "trickle", "hang",
    "echo_authorization", "huge_error", "connection_reset", "redirect_loop",
    "echo_key_content", "echo_key_error",
)  # fmt: skip
KINDS = NOT_A_COMPLETION + TRANSPORT
GOOD = "good"


@dataclass(frozen=True)
class Served:
    """One call: its prompt, what it got, whether the reply was finished, when it began."""

    prompt: str
    kind: str
    finished: bool
    at: float


@dataclass
class HostileTiming:
    """How slow the slow faults are (tests shrink these)."""

    retry_after_delay_s: float = 2.0  # wait before the 429 with Retry-After: 3600
    trickle_interval_s: float = 0.5  # one byte per interval
    hang_s: float = 3600.0  # how long a hang lasts (until the client goes away)


class HostileJudge:
    """ASGI app; `served` is appended by the server thread and read by tests."""

    def __init__(
        self,
        *,
        fault_rate: float = 0.2,
        kinds: Sequence[str] = KINDS,
        timing: HostileTiming | None = None,
        seed: int = 0,
        plan: Callable[[str], str | None] | None = None,
        latency_s: float = 0.0,
        huge_error_bytes: int = HUGE_ERROR_CHARS,
        huge_error_status: int = 500,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        self.fault_rate = fault_rate
        self.kinds = list(kinds)
        self.timing = timing or HostileTiming()
        self.plan = plan  # prompt -> fault kind (or None: good), overrides the random draw
        self.latency_s = latency_s
        self.huge_error_bytes = huge_error_bytes  # the size of a huge_error reply's body
        self.huge_error_status = huge_error_status  # 200: the same body as a non-completion
        self.served: list[Served] = []
        self.calls = CallCount()  # calls being answered right now
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def outcomes(self) -> dict[str, list[str]]:
        """prompt -> kinds served, in order; a good reply counts only once fully sent."""
        by_prompt: dict[str, list[str]] = {}
        for call in sorted(self.served, key=lambda served: served.at):
            if call.kind != GOOD or call.finished:
                by_prompt.setdefault(call.prompt, []).append(call.kind)
        return by_prompt

    def _draw(self, prompt: str) -> str:
        if self.plan is not None:
            return self.plan(prompt) or GOOD
        with self._lock:
            if self._random.random() < self.fault_rate:
                return self._random.choice(self.kinds)
        return GOOD

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await send_bytes(send, 404, error_body("not found"))  # e.g. GET /v1/models
            return
        request = json.loads(body)
        user = next(m["content"] for m in request["messages"] if m["role"] == "user")
        match = SHOWN_PAIR.search(user)
        prompt = match["prompt"] if match else user
        kind = self._draw(prompt)
        started = time.monotonic()
        await asyncio.sleep(self.latency_s)
        finished = False
        try:
            await self.calls.enter()
            await self._reply(kind, scope, receive, send, request, match)
            finished = True
        finally:
            self.calls.leave()
            self.served.append(Served(prompt, kind, finished, started))

    @property
    def in_flight(self) -> int:
        return self.calls.now

    async def _reply(self, kind, scope, receive, send, request, match) -> None:
        if kind == GOOD:
            first, second = (match["a"], match["b"]) if match else ("", "")
            choice = prefer_longer("", first, second)
            if (request.get("response_format") or {}).get("type") == "json_object":
                choice = json.dumps({"winner": choice})
            await send_bytes(send, 200, json.dumps(completion_body(request, choice)).encode())
        elif kind in NOT_A_COMPLETION:
            content_type, body = not_a_completion(kind, request)
            await send_bytes(send, 200, body, content_type=content_type)
        else:
            await getattr(self, f"_{kind}")(scope, receive, send, request)

    async def _huge_content(self, scope, receive, send, request) -> None:
        body = completion_body(request, "A" * HUGE_CONTENT_CHARS)
        await send_bytes(send, 200, json.dumps(body).encode())

    async def _retry_after_huge(self, scope, receive, send, request) -> None:
        await asyncio.sleep(self.timing.retry_after_delay_s)
        headers = {"retry-after": str(HUGE_RETRY_AFTER_S)}
        await send_bytes(send, 429, error_body("Rate limit reached, slow down."), headers=headers)

    async def _retry_after_garbage(self, scope, receive, send, request) -> None:
        headers = {"retry-after": "soon", "retry-after-ms": "-5"}
        await send_bytes(send, 503, error_body("Service unavailable."), headers=headers)

    async def _trickle(self, scope, receive, send, request) -> None:
        body = json.dumps(completion_body(request, "A")).encode()
        await start(send, 200, len(body))
        gone = asyncio.ensure_future(receive())  # http.disconnect once the client gives up
        try:
            for index in range(len(body)):
                await asyncio.wait({gone}, timeout=self.timing.trickle_interval_s)
                if gone.done():
                    return
                chunk = body[index : index + 1]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()

    async def _hang(self, scope, receive, send, request) -> None:
        try:
            await asyncio.wait_for(receive(), timeout=self.timing.hang_s)  # until disconnect
        except asyncio.TimeoutError:
            pass
        await send_bytes(send, 504, error_body("upstream timed out"))

    async def _echo_authorization(self, scope, receive, send, request) -> None:
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
        message = f"Invalid credentials in header 'Authorization: {authorization}'"
        await send_bytes(send, 401, error_body(message, code="invalid_api_key"))

    async def _huge_error(self, scope, receive, send, request) -> None:
        await send_bytes(send, self.huge_error_status, huge_error_body(self.huge_error_bytes))

    async def _echo_key_content(self, scope, receive, send, request) -> None:
        """200 with the caller's key as the "verdict", bare: no pattern gives it away."""
        body = completion_body(request, f"invalid key {caller_key(scope)}")
        await send_bytes(send, 200, json.dumps(body).encode())

    async def _echo_key_error(self, scope, receive, send, request) -> None:
        message = f"Incorrect API key provided: {caller_key(scope)}. Check it and try again."
        await send_bytes(send, 401, error_body(message, code="invalid_api_key"))

    async def _connection_reset(self, scope, receive, send, request) -> None:
        body = json.dumps(completion_body(request, "A")).encode()
        await start(send, 200, len(body))
        chunk = body[:RESET_AFTER_BYTES]
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        raise ConnectionResetError("hostile judge: connection reset mid-body")

    async def _redirect_loop(self, scope, receive, send, request) -> None:
        headers = {"location": scope["path"]}
        await send_bytes(send, 307, b"", headers=headers, content_type="text/plain")


def not_a_completion(kind: str, request: dict) -> tuple[str, bytes]:
    """(content type, body) of a 200 that is not a usable chat completion."""
    json_type = "application/json"
    good = completion_body(request, "A")
    message = good["choices"][0]["message"]
    if kind == "malformed_json":
        return json_type, json.dumps(good).encode()[:-7]
    if kind == "html_200":
        return "text/html", b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
    if kind == "empty_200":
        return json_type, b""
    if kind == "json_array":
        return json_type, b'["A"]'
    mutations: dict[str, Callable[[], object]] = {
        "non_string_content": lambda: message.update(content=1),
        "content_parts": lambda: message.update(content=[{"type": "text", "text": "A"}]),
        "string_usage": lambda: good.update(usage="lots"),
        "negative_usage": lambda: good["usage"].update(prompt_tokens=-7),
        "no_message": lambda: good["choices"][0].pop("message"),
        "empty_choices": lambda: good.update(choices=[]),
        "no_choices": lambda: good.pop("choices"),
        "bad_logprobs": lambda: good["choices"][0].update(logprobs={"content": "A"}),
        "oversized_body": lambda: good.update(padding="x" * OVERSIZED_BODY_BYTES),
    }
    if kind == "deep_json":
        return json_type, b"[" * DEEP_NESTING + b"]" * DEEP_NESTING
    mutations[kind]()
    return json_type, json.dumps(good).encode()


@functools.cache
def huge_error_body(size: int) -> bytes:
    """A 500's JSON error body of `size` bytes (built once per size)."""
    padding = size - len(error_body(HUGE_ERROR_HEAD))
    return error_body(HUGE_ERROR_HEAD + "x" * max(0, padding))


def caller_key(scope: dict) -> str:
    """The API key the caller sent (its Authorization header without `Bearer `)."""
    authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
    return authorization.removeprefix("Bearer ")


def error_body(message: str, code: str | None = None) -> bytes:
    error = {"message": message, "type": code or "server_error", "param": None, "code": code}
    return json.dumps({"error": error}).encode()


async def start(send: Send, status: int, length: int, headers: dict | None = None,
                content_type: str = "application/json") -> None:  # fmt: skip
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(length).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def send_bytes(send: Send, status: int, body: bytes, headers: dict | None = None,
                     content_type: str = "application/json") -> None:  # fmt: skip
    await start(send, status, len(body), headers, content_type)
    await send({"type": "http.response.body", "body": body})
