"""The part of a chat completion the judge reads, validated strictly.

The SDK builds its response models without validation, so a reply with a numeric
`content`, a string `usage` or a choice without `message` would only fail later, far from
its cause. Here any such reply is an InvalidReply naming the first bad field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, NonNegativeInt, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from oracle_service.core.retry import InvalidReply
from oracle_service.core.sanitize import safe_message

EXCERPT_CHARS = 80  # how much of a non-JSON reply an error message quotes


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

    def record(self, swapped: bool) -> dict[str, Any]:
        """The raw, re-parsable record of one call (what the cache keeps)."""
        choice = self.choices[0]
        usage = self.usage or _Usage()
        return {
            "swapped": swapped,
            "content": choice.message.content,
            "top_logprobs": first_token_logprobs(choice.logprobs),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        }


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


def parse_reply(data: object) -> ChatReply:
    """The reply as a ChatReply, or InvalidReply saying what is wrong with it."""
    if not isinstance(data, dict):
        shown = safe_message(repr(data), limit=EXCERPT_CHARS)
        raise InvalidReply(f"judge reply is not a JSON object: {shown}")
    try:
        return ChatReply.model_validate(data)
    except PydanticValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "reply"
        raise InvalidReply(
            f"judge reply is not a chat completion: {where}: {error['msg']}"
        ) from None
