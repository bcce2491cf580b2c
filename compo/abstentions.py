"""Abstentions are a failure, not a vote.

An iteration in which more than oracle.max_abstain_ratio of the comparisons that needed an
answer abstained takes no step (a failed iteration: its metrics row says why). After
oracle.max_failed_iterations failed iterations in a row the run stops with OracleFailure,
saved as it was before the first of them (no step was taken since), so that `--resume`
redoes them once the cause is fixed. A vote source tells what abstained through an
optional `abstentions()` method (the service oracle: judge errors by kind, with the fix);
for any other source, directions without a vote (0) are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Abstentions:
    """One iteration's abstentions: how many of the asked comparisons (or directions) got
    no answer, and why, with the fix (one line)."""

    abstained: int
    asked: int
    cause: str

    @property
    def share(self) -> float:
        return self.abstained / self.asked if self.asked else 0.0


def from_votes(votes: torch.Tensor) -> Abstentions:
    """Directions whose vote is 0 (every comparison of theirs abstained)."""
    abstained, asked = int((votes == 0).sum()), votes.numel()
    return Abstentions(abstained, asked, f"{abstained} of {asked} directions got no vote "
                       "(every comparison of theirs abstained)")


def abstentions_of(source, votes: torch.Tensor) -> Abstentions:
    """The source's account of this iteration's abstentions, else the votes' own."""
    method = getattr(source, "abstentions", None)
    found = method() if callable(method) else None
    return found if found is not None else from_votes(votes)


def failure(found: Abstentions, max_ratio: float) -> str | None:
    """The cause when the iteration failed (too many abstentions), else None."""
    return found.cause if found.asked and found.share > max_ratio else None


@dataclass
class FailureStreak:
    """Failed iterations in a row, and where the run stood before the first of them."""

    limit: int
    count: int = 0
    done: int = 0  # iterations done before the streak
    offset: int = 0  # data.reselect's offset before the streak

    def observe(self, cause: str | None, done: int, offset: int) -> bool:
        """Count an iteration (`done`, `offset`: before it); True when the run must stop."""
        if cause is None:
            self.count = 0
            return False
        if self.count == 0:
            self.done, self.offset = done, offset
        self.count += 1
        return self.count >= self.limit

    def message(self, cause: str, run_dir: str) -> str:
        return (f"{cause}. The run stopped after {self.count} failed iterations in a row "
                f"(oracle.max_failed_iterations) and is saved before them: fix the cause, "
                f"then compo train --resume {run_dir}")
