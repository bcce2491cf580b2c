"""Parsing a judge reply from its bytes: bounded nesting, every failure an InvalidReply that
keeps neither the reply nor the parser's errors."""

from __future__ import annotations

import json

import pytest

from oracle_service.backends.judge_reply import (
    MAX_REPLY_DEPTH,
    nests_deeper_than,
    parse_body,
)
from oracle_service.core.retry import InvalidReply

COMPLETION = {"choices": [{"message": {"content": "A"}, "logprobs": {"content": [
    {"token": "A", "logprob": -0.1, "top_logprobs": [{"token": "B", "logprob": -2.3}]}]}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1}}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "limit", "deeper"),
    [(b"[[1]]", 1, True), (b"[[1]]", 2, False), (b'["[[[[", {"a": [1]}]', 2, True),
     (b'["[[[[", {"a": [1]}]', 3, False), (b'["\\\\", [[[]]]]', 3, True),
     (b'["\\"[[[[", 1]', 1, False), (b"[" * 400_000 + b"]" * 400_000, 32, True)],
)  # fmt: skip
def test_nesting_is_counted_outside_strings(body, limit, deeper):
    assert nests_deeper_than(body, limit) is deeper


def test_a_completion_parses_and_deep_or_broken_bodies_are_invalid_replies():
    reply = parse_body(json.dumps(COMPLETION).encode())
    assert reply.record(swapped=False, max_chars=10)["top_logprobs"] == {"A": -0.1, "B": -2.3}
    deep = b"[" * (MAX_REPLY_DEPTH + 1) + b"]" * (MAX_REPLY_DEPTH + 1)
    for body, message in ((deep, "nests deeper than 32"), (b"{", "not valid JSON"),
                          (b"\xff", "not valid JSON"), (b"[1]", "not a JSON object"),
                          (b'{"choices": []}', "choices: List should have at least 1")):
        with pytest.raises(InvalidReply, match=message) as caught:
            parse_body(body)
        assert caught.value.__context__ is None  # the decoder's copy of the body is not kept


def test_an_answer_longer_than_the_cap_is_cut_and_marked():
    body = json.dumps({**COMPLETION, "choices": [{"message": {"content": "A" * 5000}}]})
    record = parse_body(body.encode()).record(swapped=True, max_chars=4096)
    assert len(record["content"]) == 4096 and record["truncated"] is True
    assert "truncated" not in parse_body(json.dumps(COMPLETION).encode()).record(False, 4096)
