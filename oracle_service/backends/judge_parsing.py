"""Strict parsing of judge output; works on the raw record stored in the cache."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

from oracle_service.backends.base import Verdict
from oracle_service.core.sanitize import safe_message
from oracle_service.schemas import ComparisonItem, ErrorKind, VerdictLabel

OutputFormat = Literal["token", "json"]
PRESENTED_CHOICES = {"A": VerdictLabel.A, "B": VerdictLabel.B, "TIE": VerdictLabel.TIE}
EXCERPT_CHARS = 120  # how much of a bad output an error message quotes
_TEMPLATE_FIELD = re.compile(r"\{(prompt|response_a|response_b)\}")


class MalformedOutput(ValueError):
    """The judge said something that is not one of the allowed answers."""


def render_template(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """Fill {prompt}, {response_a}, {response_b} in one pass (other braces untouched)."""
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return _TEMPLATE_FIELD.sub(lambda match: values[match.group(1)], template)


def content_seeded_swap(item: ComparisonItem) -> bool:
    """Whether to show response_b first: a hash of the unordered pair decides."""
    low, high = sorted((item.response_a, item.response_b))
    digest = hashlib.sha256("\0".join((item.prompt, low, high)).encode()).digest()
    shown_first = high if digest[0] & 1 else low
    return shown_first != item.response_a


def excerpt(text: str) -> str:
    """The start of a judge output, quoted; secrets are redacted before it is cut."""
    return repr(safe_message(text, limit=EXCERPT_CHARS))


def parse_choice(content: str | None, output_format: OutputFormat,
                 truncated: bool = False) -> VerdictLabel:  # fmt: skip
    """A, B or TIE for the order shown; anything else raises MalformedOutput."""
    if content is None:
        raise MalformedOutput("judge returned no content")
    if truncated:  # longer than judge_max_kept_bytes: no answer is
        raise MalformedOutput(f"judge output is longer than any answer: {excerpt(content)}")
    text = content.strip()
    if output_format == "json":
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            raise MalformedOutput(f"judge output is not JSON: {excerpt(text)}") from None
        winner = parsed.get("winner") if isinstance(parsed, dict) else None
        text = winner.strip().upper() if isinstance(winner, str) else ""
    choice = PRESENTED_CHOICES.get(text)
    if choice is None:
        raise MalformedOutput(f"judge output is not one of A, B, TIE: {excerpt(content)}")
    return choice


def presented_probability(top_logprobs: dict[str, float] | None) -> float | None:
    """P(first shown is better) from the first token's logprobs of 'A' and 'B'."""
    if not top_logprobs or "A" not in top_logprobs or "B" not in top_logprobs:
        return None
    return 1.0 / (1.0 + math.exp(top_logprobs["B"] - top_logprobs["A"]))


def verdict_from_raw(raw: dict[str, Any], output_format: OutputFormat) -> Verdict:
    """Verdict for the item from its judge calls; orders that disagree give a tie."""
    labels: list[VerdictLabel] = []
    probabilities: list[float] = []
    for call in raw["calls"]:
        try:
            shown = parse_choice(call["content"], output_format, call.get("truncated", False))
        except MalformedOutput as exc:
            return Verdict.abstain(ErrorKind.MALFORMED_OUTPUT, str(exc))
        labels.append(shown.flipped() if call["swapped"] else shown)
        p_shown = presented_probability(call.get("top_logprobs"))
        if p_shown is not None:
            probabilities.append(1.0 - p_shown if call["swapped"] else p_shown)
    inconsistent = len(set(labels)) > 1
    probability = None
    if probabilities and len(probabilities) == len(labels):
        probability = sum(probabilities) / len(probabilities)
    label = VerdictLabel.TIE if inconsistent else labels[0]
    return Verdict(label, probability, raw=raw, position_inconsistent=inconsistent)
