"""Progress as log lines, for runs without a progress bar (`--no-progress`, `ray job
submit`): one INFO line every LOG_EVERY iterations or LOG_EVERY_S seconds, whichever comes
first, with the iteration, the accepted and failed ones so far, the vote ratio and the ETA."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LOG_EVERY = 10  # iterations between two lines at most
LOG_EVERY_S = 30.0  # seconds between two lines at most


def duration(seconds: float) -> str:
    """1h02m, 3m05s or 42s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLog:
    """Counts iterations as they finish and logs a line when one is due."""

    def __init__(self, total: int, earlier: list[dict], clock: Callable[[], float]
                 = time.monotonic, every: int = LOG_EVERY, every_s: float = LOG_EVERY_S):
        """`earlier`: the metrics rows of a resumed run's finished iterations."""
        self.total, self.clock, self.every, self.every_s = total, clock, every, every_s
        self.accepted = sum(bool(row["accepted"]) for row in earlier)
        self.failed = sum(bool(row.get("failed")) for row in earlier)
        self.first = self.last_done = len(earlier)
        self.started = self.last_at = clock()

    def observe(self, row: dict, done: int) -> str | None:
        """Count a finished iteration (`done` iterations in all); the line, if one was due."""
        self.accepted += bool(row["accepted"])
        self.failed += bool(row.get("failed"))
        now = self.clock()
        if (done - self.last_done < self.every and now - self.last_at < self.every_s
                and done < self.total):
            return None
        rate = (now - self.started) / max(done - self.first, 1)
        failed = f", {self.failed} failed" if self.failed else ""
        line = (f"iteration {done}/{self.total}: {self.accepted} accepted{failed}, vote ratio "
                f"{row['ratio']:.3f}, ETA {duration(rate * (self.total - done))}")
        log.info("%s", line)
        self.last_done, self.last_at = done, now
        return line
