"""bench/low_rank.py --quick --json: its JSON last line has every figure the issue asks
for, keyed by direction family (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"gaussian", "rank1", "rank4", "rank16"}


def test_quick_json_has_seconds_cosines_and_shares_of_every_family():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "low_rank.py"), "--quick",
                             "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("iteration_seconds", "cosine", "clipped_cosine", "both_share"):
        assert set(summary[key]) == KINDS, key
    assert all(seconds > 0 for seconds in summary["iteration_seconds"].values())
    assert all(0 < value < 1 for value in summary["cosine"].values())
    assert summary["timing"]["gaussian"]["gemm_bound_votes_s"] > 0
    assert set(summary["cosine_vs_m"]["rank4"]) == {"100", "200"}
    measured = summary["both_share"]["gaussian"] is not None
    assert measured or summary["demo"].startswith("not measured")
