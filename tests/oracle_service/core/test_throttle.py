"""Failed logins per client: a limit over a sliding window, bounded memory."""

from oracle_service.core import throttle
from oracle_service.core.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_waits_until_its_oldest_failure_leaves_the_window():
    clock = Clock()
    limit = LoginThrottle(failures=3, window_s=60.0, clock=clock)
    for _ in range(3):
        assert limit.wait_s("a") == 0
        limit.failed("a")
        clock.now += 10
    assert limit.wait_s("a") == 30 and limit.wait_s("b") == 0  # first failure at 1000, now 1030
    clock.now += 29.5
    assert limit.wait_s("a") == 1
    clock.now += 0.5
    assert limit.wait_s("a") == 0  # one failure left the window: one more try
    limit.failed("a")
    assert limit.wait_s("a") == 10
    limit.succeeded("a")
    assert limit.wait_s("a") == 0


def test_at_most_max_clients_are_remembered(monkeypatch):
    monkeypatch.setattr(throttle, "MAX_CLIENTS", 3)
    limit = LoginThrottle(failures=1, window_s=60.0, clock=Clock())
    for client in ("a", "b", "c", "d"):
        limit.failed(client)
    assert [limit.wait_s(client) > 0 for client in "abcd"] == [False, True, True, True]
