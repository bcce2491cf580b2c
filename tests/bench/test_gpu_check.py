"""bench/gpu_check.sh: the dry run does every step of the GPU check on CPU at toy sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = {"gpu_tests", "throughput", "fused_agreement", "ray_two_workers", "moved_layers",
         "compile_table", "kernel_launch"}
GUARD_S = 1800  # the dry run on a busy CPU; the 16-minute budget is the GPU's, not the CPU's


def run_check(*args: str, timeout: float = GUARD_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_dry_run_writes_every_step_s_figures_to_one_file(tmp_path):
    out = tmp_path / "check.json"
    result = run_check("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["passed"] and set(report["steps"]) == STEPS
    steps = {name: step["figures"] for name, step in report["steps"].items()}
    assert steps["gpu_tests"]["failures"] == steps["gpu_tests"]["errors"] == 0
    assert steps["gpu_tests"]["skipped"] == steps["gpu_tests"]["tests"] > 0  # no GPU here
    throughput = steps["throughput"]
    assert throughput["gemm_bound_per_s"] > 0 and throughput["limit_fraction"] > 0
    assert throughput["ours_seconds_per_1800"] > 0 and "vote_agreement" in throughput
    for variant in ("no_cap", "soft_cap_30"):
        assert steps["fused_agreement"][variant]["vote_agreement"] == 1.0
        assert steps["fused_agreement"][variant]["max_relative_difference"] < 1e-4
    assert steps["ray_two_workers"]["workers"]["2"]["perturbations_per_s"] > 0
    assert steps["moved_layers"]["cost_ratio"] > 0 and steps["moved_layers"]["limit_fraction"] > 0
    table = steps["compile_table"]["kernels"]
    assert table and all(row["compiled"] and row["spill_bytes"] == 0 for row in table)
    launched = steps["kernel_launch"]["launched"]
    assert steps["kernel_launch"]["passed"] and any(row["status"] == "passed" for row in launched)
    assert report["seconds"] == sum(step["seconds"] for step in report["steps"].values())


def test_without_a_gpu_the_real_check_refuses_and_points_to_the_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real check would run")
    result = run_check("--out", str(tmp_path / "x.json"), timeout=120)
    assert result.returncode == 2 and "--dry-run" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_unknown_arguments_are_refused_with_the_usage():
    result = run_check("--fast", timeout=60)
    assert result.returncode == 2 and "usage: bench/gpu_check.sh" in result.stderr
