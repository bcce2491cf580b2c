"""Log lines instead of a progress bar: every LOG_EVERY iterations or LOG_EVERY_S seconds."""

import logging

from compo.progress import LOG_EVERY, LOG_EVERY_S, ProgressLog, duration


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def row(accepted=True, ratio=0.25, **extra):
    return {"accepted": accepted, "ratio": ratio, **extra}


def test_a_line_every_n_iterations_with_the_eta(caplog):
    caplog.set_level(logging.INFO, logger="compo.progress")
    clock = Clock()
    ticker = ProgressLog(4 * LOG_EVERY, [], clock)
    lines = []
    for done in range(1, 2 * LOG_EVERY + 1):
        clock.now += 1.0  # a second per iteration
        lines.append(ticker.observe(row(accepted=done % 2 == 0), done))
    assert [i + 1 for i, line in enumerate(lines) if line] == [LOG_EVERY, 2 * LOG_EVERY]
    eta = duration(2 * LOG_EVERY)  # the remaining iterations at a second each
    assert lines[-1] == (f"iteration {2 * LOG_EVERY}/{4 * LOG_EVERY}: {LOG_EVERY} accepted, "
                         f"vote ratio 0.250, ETA {eta}")
    assert caplog.records[-1].getMessage() == lines[-1]


def test_a_line_after_the_interval_however_few_iterations_and_at_the_end():
    clock = Clock()
    ticker = ProgressLog(50, [row(), row(accepted=False, failed="down")], clock)  # resumed
    clock.now += LOG_EVERY_S - 1
    assert ticker.observe(row(), 3) is None
    clock.now += 1
    assert ticker.observe(row(failed="down", accepted=False), 4).startswith(
        "iteration 4/50: 2 accepted, 2 failed, vote ratio")
    assert ticker.observe(row(), 50).endswith("ETA 0s")  # the last iteration always logs


def test_durations_read_well():
    assert [duration(s) for s in (42, 185, 3720)] == ["42s", "3m05s", "1h02m"]
