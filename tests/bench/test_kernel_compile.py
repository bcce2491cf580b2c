"""bench/kernel_compile.py: every default kernel compiles for sm_80 and sm_90 (no GPU needed)
without spilling registers; the launch counts come from the planners."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compo.kernels import fused

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "kernel_compile.py"
FIELDS = {"name", "target", "default", "compiled", "registers", "spill_bytes", "shared_bytes"}
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="needs triton (pip install 'compo[gpu]')")


def load_script():
    spec = importlib.util.spec_from_file_location("kernel_compile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@needs_triton
def test_every_default_compiles_for_sm80_and_sm90_without_spills():
    """The full table (every candidate tile) takes ~5 minutes on 2 cores; CI compiles the
    configurations auto launches (~1-2 minutes)."""
    env = {k: v for k, v in os.environ.items() if k != fused.INTERPRET_ENV}
    result = subprocess.run([sys.executable, str(SCRIPT), "--defaults-only", "--json",
                             "--jobs", "2"], capture_output=True, text=True, timeout=900,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = report["kernels"]
    assert all(FIELDS <= set(row) and row["default"] and row["compiled"] for row in rows)
    names = {row["name"] for row in rows}
    assert {(name, target) for name in names for target in ("sm_80", "sm_90")} == {
        (row["name"], row["target"]) for row in rows}
    assert len(names) == len(fused.TILES) + 2 * len(load_script().POINTER)
    assert all(row["spill_bytes"] == 0 and 0 < row["registers"] <= 255 for row in rows)
    assert report["launches"]["total"]["triton"] < report["launches"]["total"]["torch"] / 100


def test_the_variants_cover_every_launchable_configuration():
    script = load_script()
    variants = script.variants()
    defaults = [v for v in variants if v.default]
    token = [v for v in defaults if v.kernel == "token_changes_kernel"]
    assert {(v.constexprs["DOT"], v.constexprs["HAS_CAP"]) for v in token} == set(fused.TILES)
    for variant in token:
        tile = fused.TILES[variant.constexprs["DOT"], variant.constexprs["HAS_CAP"]]
        assert variant.options == tile.launch_options()
        assert variant.constexprs["BLOCK_N"] == tile.tokens and variant.constexprs[
            "BLOCK_W"] == tile.words
    every_tile = {(v.constexprs["DOT"], v.constexprs["HAS_CAP"], v.tags["tile"])
                  for v in variants if v.kernel == "token_changes_kernel"}
    assert len(every_tile) == len(fused.TILES) * len(fused.CANDIDATE_TILES)
    assert {v.kernel for v in defaults} == {"token_changes_kernel", "row_products_kernel",
                                            "fill_kernel"}


def test_launch_counts_follow_the_planners():
    """At Mistral shape a worker's rebuild draws every direction for its row shard: one
    Triton launch per planned block, against ~18 torch ops per 65,536 words."""
    script = load_script()
    counts = script.launches_per_iteration()
    shape = counts["shape"]
    assert counts["rebuild"]["triton"] == shape["m"]  # one direction per block at 7B
    assert counts["votes_eager"]["triton"] == 2 * -(-shape["m"] // shape["workers"])
    assert counts["torch_launches_per_piece"] >= 10
    assert counts["total"]["torch"] > 500 * counts["total"]["triton"]
    assert counts["fused_vote_launches"] == 1
