"""bench/coordinator.py: the coordinator's classes driven in process, its JSON last line."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_prints_seconds_per_iteration_by_workers_and_keeps_every_worker_busy():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "coordinator.py"), "--json",
                             "--workers", "4", "30", "--iterations", "1"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["seconds_per_iteration"]) == {"4", "30"}
    assert all(seconds > 0 for seconds in summary["seconds_per_iteration"].values())
    for case in summary["cases"]:  # m = 1,800 or 60 per worker: every worker voted
        assert case["busy_workers"] == case["workers"], case
