"""Failed-login throttling per client: at most `failures` in any `window_s`, then refuse.

Kept in memory by each replica (a client meets the limit of the replica it reaches); at
most MAX_CLIENTS addresses are tracked, the least recently failed forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_CLIENTS = 10_000  # addresses tracked at once: bounds memory under a spoofing flood


class LoginThrottle:
    """Remembers each client's recent failed logins."""

    def __init__(
        self, failures: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self._clock = clock
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()

    def _pruned(self, client: str) -> deque[float]:
        times = self._recent.get(client, deque())
        while times and times[0] <= self._clock() - self.window_s:
            times.popleft()
        return times

    def wait_s(self, client: str) -> int:
        """0 if the client may try to log in now, else whole seconds until it may."""
        times = self._pruned(client)
        if len(times) < self.failures:
            return 0
        return max(1, math.ceil(times[0] + self.window_s - self._clock()))

    def failed(self, client: str) -> None:
        """Count a failed login of `client`."""
        times = self._pruned(client)
        times.append(self._clock())
        self._recent[client] = times
        self._recent.move_to_end(client)
        while len(self._recent) > MAX_CLIENTS:
            self._recent.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._recent.pop(client, None)
