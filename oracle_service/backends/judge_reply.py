"""The part of a chat completion the judge reads, parsed here from the bytes, validated
strictly.

The body (at most judge_max_response_bytes, judge_http.py) is parsed with a bounded nesting
depth: JSON nested 400,000 deep is an InvalidReply like any other body that is not a
completion, never a RecursionError. The SDK builds its response models without validation,
so a reply with a numeric `content`, a string `usage` or a choice without `message` would
only fail later, far from its cause. Here any such reply is an InvalidReply naming the
first bad field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, NonNegativeInt, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from oracle_service.core.retry import InvalidReply
from oracle_service.core.sanitize import safe_message

EXCERPT_CHARS = 80  # how much of a non-JSON reply an error message quotes
MAX_REPLY_DEPTH = 32  # arrays and objects in arrays and objects; a completion needs ~8
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


class _TopLogprob(BaseModel):
    token: StrictStr
    logprob: StrictFloat | StrictInt


class _TokenLogprob(_TopLogprob):
    top_logprobs: list[_TopLogprob] = Field(default_factory=list)


class _Logprobs(BaseModel):
    content: list[_TokenLogprob] | None = None


class _Message(BaseModel):
    content: StrictStr | None = None


class _Choice(BaseModel):
    message: _Message
    logprobs: _Logprobs | None = None


class _Usage(BaseModel):
    prompt_tokens: NonNegativeInt = Field(0, strict=True)
    completion_tokens: NonNegativeInt = Field(0, strict=True)


class ChatReply(BaseModel):
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None

    def record(self, swapped: bool, max_chars: int) -> dict[str, Any]:
        """The raw, re-parsable record of one call (what the cache keeps); content longer
        than `max_chars` (no answer is) is cut there and marked `truncated`."""
        choice = self.choices[0]
        usage = self.usage or _Usage()
        content = choice.message.content
        record = {
            "swapped": swapped,
            "content": content if content is None else content[:max_chars],
            "top_logprobs": first_token_logprobs(choice.logprobs),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        }
        if content is not None and len(content) > max_chars:
            record["truncated"] = True
        return record


def first_token_logprobs(logprobs: _Logprobs | None) -> dict[str, float] | None:
    """{token (stripped): best logprob} over the first generated token's alternatives."""
    if logprobs is None or not logprobs.content:
        return None
    first = logprobs.content[0]
    top: dict[str, float] = {}
    for alternative in [first, *first.top_logprobs]:
        token = alternative.token.strip()
        top[token] = max(top.get(token, alternative.logprob), alternative.logprob)
    return top


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text's arrays and objects nest more than `limit` deep (strings
    skipped); it stops at the first level past `limit`, so 400,000 levels cost `limit`."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # too few brackets to nest that deep: nothing to scan
    depth = 0
    for byte in _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in _OPENING else -1
        if depth > limit:
            return True
    return False


def parse_body(body: bytes) -> ChatReply:
    """The reply's bytes as a ChatReply, or InvalidReply; nesting deeper than
    MAX_REPLY_DEPTH is refused before the JSON is parsed."""
    if nests_deeper_than(body, MAX_REPLY_DEPTH):
        raise InvalidReply(f"judge reply nests deeper than {MAX_REPLY_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, or not UTF-8
        problem = f"judge reply is not valid JSON: {exc}"
    else:
        return parse_reply(data)
    raise InvalidReply(problem)  # raised here, its context is not the decoder's copy of the body


def parse_reply(data: object) -> ChatReply:
    """The reply as a ChatReply, or InvalidReply saying what is wrong with it."""
    if not isinstance(data, dict):
        shown = safe_message(repr(data), limit=EXCERPT_CHARS)
        raise InvalidReply(f"judge reply is not a JSON object: {shown}")
    try:
        return ChatReply.model_validate(data)
    except PydanticValidationError as exc:
        error = exc.errors(include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "reply"
        problem = f"judge reply is not a chat completion: {where}: {error['msg']}"
    raise InvalidReply(problem)  # raised here, its context is not the error holding the reply
