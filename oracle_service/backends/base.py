"""The backend interface: `async compare(items, deadline) -> list[Verdict]`, one per item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from oracle_service.core.sanitize import safe_message
from oracle_service.schemas import ComparisonError, ComparisonItem, ErrorKind, VerdictLabel


@dataclass(frozen=True)
class Verdict:
    """A backend's answer for one item; `abstain` always carries an error."""

    label: VerdictLabel
    probability: float | None = None  # P(response_a is better)
    error: ComparisonError | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # raw output, kept in the cache
    position_inconsistent: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        if (self.label is VerdictLabel.ABSTAIN) != (self.error is not None):
            raise ValueError("a verdict abstains exactly when it carries an error")

    @classmethod
    def abstain(cls, kind: ErrorKind, message: str, **usage: int) -> Verdict:
        """An abstention; the message is made safe (bounded, one line, credentials redacted)."""
        error = ComparisonError(kind=kind, message=safe_message(message))
        return cls(VerdictLabel.ABSTAIN, error=error, **usage)

    @property
    def ok(self) -> bool:
        return self.label is not VerdictLabel.ABSTAIN

    def flipped(self) -> Verdict:
        """The verdict for the same pair with response_a and response_b swapped."""
        probability = None if self.probability is None else 1.0 - self.probability
        return replace(self, label=self.label.flipped(), probability=probability)


class Backend(Protocol):
    """A comparison oracle. `identity` and `cache_params` go into the cache key."""

    identity: str
    cache_params: dict[str, Any]

    async def compare(
        self, items: Sequence[ComparisonItem], deadline: float | None = None
    ) -> list[Verdict]:
        """One verdict per item, never raising for an item; `deadline` is event-loop time
        (None: item_deadline_s from now), after which unanswered items abstain."""

    async def aclose(self) -> None: ...
