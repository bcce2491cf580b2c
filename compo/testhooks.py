"""A test hook: stop the program at a named point until a file appears.

`COMPO_PAUSE_AT=<point>:<file>` (set by tests only) makes `pause_point(<point>)` print
"compo: paused at <point>" to stderr and wait until <file> exists (no file named: until a
signal ends the wait). Tests then act (Ctrl-C, kill) at a known moment instead of guessing
with sleeps. Unset, `pause_point` does nothing. Points: `iteration-<i>` (compo/train.py:
iteration i voted and stepped, its checkpoint not written yet).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PAUSE_ENV = "COMPO_PAUSE_AT"
POLL_S = 0.01  # how often the paused program looks for the release file
PAUSED = "compo: paused at"  # the line a test waits for


def pause_point(name: str) -> None:
    """Wait here if COMPO_PAUSE_AT names this point; otherwise return at once."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    point, _, release = spec.partition(":")
    if point != name:
        return
    print(f"{PAUSED} {name}", file=sys.stderr, flush=True)
    while not (release and Path(release).exists()):
        time.sleep(POLL_S)
