"""Threading defaults the CLI sets before torch loads; the user's own environment wins.

OpenMP threads (torch's CPU kernels) spin while they wait for work. On a machine shared
with other jobs a parallel region then waits for threads that are spinning or descheduled:
the demo's ComPO stage took 4x as long on a lightly loaded 2-core machine (README, "CPU
threads"). OMP_WAIT_POLICY=PASSIVE lets waiting threads sleep; set OMP_WAIT_POLICY=ACTIVE
(or any value) yourself to keep another policy.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each default the environment does not set already; returns those it set. Only
    effective before torch (and with it OpenMP) is loaded."""
    added = {name: value for name, value in DEFAULTS.items() if not environ.get(name)}
    environ.update(added)
    return added
