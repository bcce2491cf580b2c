"""A process's resident memory, as each role reports it (no Ray here)."""

from __future__ import annotations

KIB = 1024  # /proc reports kB


def resident_bytes() -> int:
    """This process's resident memory now (VmRSS), in bytes; 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0
