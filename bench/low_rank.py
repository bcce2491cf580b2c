"""Dense or low-rank directions? (#25) One run on this machine's CPU cores, four parts:

(a) seconds per iteration at Mistral-7B's output layer (V = 32,000, d = 4,096), T = 1,000
    completion tokens (two sequences of 500), m = 1,800: the votes (exact log-prob change
    per perturbation) plus the update sum_i y_i z_i. Gaussian: a few perturbations measured
    and extrapolated to m, and the bare GEMM h z^T (its bound); rank 1, 4, 16: a measured
    share of m (the fastest of 3 timings), extrapolated linearly (the work is linear in m;
    the share is printed; the update's once-per-iteration part is measured apart, from two
    sizes).
(b) statistical efficiency: the sparse-recovery setting of tests/compo/test_estimator.py
    (d = 100,000 laid out as [100, 1000], s = 20, f = g.x + |x_S|^2 / 2, radius 1e-3):
    cosine of sum_i y_i z_i (and of its clipped unit, sigma 4.5) to the true gradient vs m.
(c) the demo's noisy pairs (y+ up and y- down; accepted iterations) at equal m and equal CPU
    time (m scaled by the ComPO stage's seconds), and (d) the learning bench's length
    contrast with the service oracle, Gaussian vs rank 4 (bench/low_rank_runs.py; printed
    "not measured" where the config refuses low-rank runs, and with --quick).

  python bench/low_rank.py [--json] [--quick] [--workdir runs/low_rank_bench]
As an AVX2 laptop without AMX would run it, on a machine that has more:
  COMPO_CPU_MARCH=haswell MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 python ...
The last line is one JSON object: iteration_seconds, cosine (m = 2,000), both_share, keyed
gaussian, rank1, rank4, rank16.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compo.cli.threads import apply_defaults  # noqa: E402

apply_defaults()  # OpenMP's wait policy as `compo train` sets it, before torch loads
import torch  # noqa: E402
from low_rank_runs import (  # noqa: E402
    KINDS,
    LEARNING_NOTE,
    NOT_MEASURED,
    QUICK_NOTE,
    demo_part,
    full_runs,
    learning_part,
    service_low_rank,
)

from compo.config import ClipConfig, ComPOConfig  # noqa: E402
from compo.directions import low_rank_factors  # noqa: E402
from compo.estimator import clip_small, clip_threshold, normalise, vote_weighted_sum  # noqa: E402
from compo.kernels.cpu import MARCH_ENV, target_flag  # noqa: E402
from compo.model.head import PLAIN  # noqa: E402
from compo.model.scoring import HeadInputs  # noqa: E402
from compo.oracle import (  # noqa: E402
    accumulate,
    build_state,
    exact_products,
    logit_change,
    logprob_changes,
    sequence_totals,
)
from compo.perturbation import (  # noqa: E402
    block_budget,
    direction,
    direction_key,
    normals,
    plan_blocks,
)

RADIUS = 5e-4
REPEATS = 3  # low-rank timings: the fastest of this many
# what a run may restrict to emulate a smaller CPU (an AVX2 laptop: haswell / AVX2 / avx2)
ISA_ENV = (MARCH_ENV, "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
SIZES = {  # (a): the head, tokens, m; measured perturbations and update directions
    "full": dict(vocab=32000, width=4096, tokens=1000, m=1800, dense=2, low=96, update=64),
    "quick": dict(vocab=2000, width=256, tokens=100, m=1800, dense=4, low=64, update=32),
}
SPARSE_SHAPE, SPARSE_S, SPARSE_RADIUS = (100, 1000), 20, 1e-3
SPARSE_M = {"full": (250, 500, 1000, 2000), "quick": (100, 200)}
SPARSE_SEEDS = {"full": 5, "quick": 1}
CLIP = ClipConfig(mode="sigma", value=4.5)
PRODUCT_BUDGET = 1 << 22  # products per block of the low-rank fallback (values, float32)


def head_inputs(vocab: int, width: int, tokens: int) -> tuple[HeadInputs, torch.Tensor]:
    """What the oracle's head sees for a random head: two sequences of tokens / 2."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, width, generator=generator) / math.sqrt(width)
    hidden = torch.randn(tokens, width, generator=generator)
    targets = torch.randint(vocab, (tokens,), generator=generator)
    segment = (torch.arange(tokens) * 2) // tokens
    return HeadInputs(hidden, targets, segment, 2), weight


def low_rank_changes(state, keys, radius: float, rank: int):
    """[P, S] log-prob changes of low-rank directions: compo.oracle's when it has them,
    else the same math here (h B^T, times A per block of rows, the exact change)."""
    try:
        from compo.oracle import low_rank_changes as library
    except ImportError:
        library = None
    if library is not None:
        return library(state, keys, radius, rank, block_budget(None, "cpu"))
    a, b = low_rank_factors(keys, state.shape, rank)  # [P, r, V], [P, r, d]
    projected = state.inputs.hidden.float() @ b.transpose(1, 2) / math.sqrt(rank)  # [P, N, r]
    spread = torch.zeros(len(keys), state.inputs.targets.numel())
    at_target = torch.zeros_like(spread)
    step = max(1, PRODUCT_BUDGET // (len(keys) * state.inputs.targets.numel()))
    for start in range(0, state.shape[0], step):
        rows = slice(start, min(state.shape[0], start + step))
        change = logit_change(torch.bmm(projected, a[:, :, rows]), radius, None, None)
        accumulate(state, rows, change, at_target, spread)
    return sequence_totals(state, at_target, spread)


def low_rank_update(seed: int, votes: torch.Tensor, shape: tuple[int, int], rank: int):
    """sum_i y_i z_i [V, d] of the low-rank directions (seed, 0, i < len(votes)):
    A_Y^T diag(y) B_Y / sqrt(r) as GEMMs (the estimator's own when it has them)."""
    if "directions" in inspect.signature(vote_weighted_sum).parameters:
        return vote_weighted_sum(seed, 0, torch.arange(len(votes)), votes, shape, None,
                                 directions=_low_rank(rank))
    keys = [direction_key(seed, 0, index) for index in range(len(votes))]
    total = torch.zeros(shape)
    for start in range(0, len(keys), 16):
        a, b = low_rank_factors(keys[start : start + 16], shape, rank)
        y = votes[start : start + 16].float()
        total.addmm_(a.reshape(-1, shape[0]).T, (b * y[:, None, None]).reshape(-1, shape[1]))
    return total / math.sqrt(rank)


def _low_rank(rank: int):
    from compo.directions import DirectionsConfig

    return DirectionsConfig(kind="low_rank", rank=rank)


def implementation() -> str:
    """Where the low-rank products come from in this run."""
    try:
        from compo.oracle import low_rank_changes  # noqa: F401
    except ImportError:
        return "bench (compo.directions factors; compo.oracle has no low-rank products yet)"
    from compo.kernels import cpu

    update = ("update on AMX tiles (compo/kernels/amx.c)" if cpu.amx_ready()
              else "update as float32 GEMMs (no AMX here)")
    if cpu.available():
        return ("compo.oracle.low_rank_changes, compiled CPU kernel (compo/kernels/low_rank.c); "
                + update)
    return "compo.oracle.low_rank_changes, torch path (no C compiler); " + update


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def fastest(function) -> float:
    """The fastest of REPEATS timings: what the work costs, less the machine's other jobs."""
    return min(timed(function) for _ in range(REPEATS))


def dense_seconds(state, size: dict) -> dict:
    """Gaussian: seconds per perturbation of the oracle and of the bare GEMM (the fastest
    of size['dense'] each, interleaved) and of one direction's share of the update."""
    chunk = plan_blocks(1, state.shape, ComPOConfig().block_elements, "cpu")[1]
    hidden = state.inputs.hidden
    z = direction(direction_key(0, 9, 0), state.shape)[None]
    votes = torch.ones(size["dense"], dtype=torch.int8)
    logprob_changes(state, [direction_key(0, 0, 99)], RADIUS, chunk)  # warm-up
    oracle, gemm = [], []
    for index in range(size["dense"]):  # interleaved: both see the same machine state
        oracle.append(timed(lambda i=index: logprob_changes(state, [direction_key(0, 0, i)],
                                                            RADIUS, chunk)))
        gemm.append(timed(lambda: exact_products(hidden, z)))
    update = timed(lambda: vote_weighted_sum(0, 0, torch.arange(size["dense"]), votes,
                                             state.shape, None)) / size["dense"]
    return {"votes": min(oracle), "gemm": min(gemm), "update": update}


def low_rank_seconds(state, size: dict, rank: int) -> dict:
    """Rank r, each timing the fastest of REPEATS: seconds per perturbation of the votes
    (size['low'] measured in groups of 16), and the update's seconds per direction and once
    per iteration (the [V, d] sum's allocation and scaling), from updates of size['update']
    and 3 x size['update'] directions."""
    keys = [direction_key(0, 0, index) for index in range(size["low"])]
    low_rank_changes(state, keys[:16], RADIUS, rank)  # warm-up
    votes = fastest(lambda: [low_rank_changes(state, keys[s : s + 16], RADIUS, rank)
                             for s in range(0, len(keys), 16)]) / len(keys)
    counts = (size["update"], 3 * size["update"])
    seconds = [fastest(lambda n=n: low_rank_update(0, update_signs(n), state.shape, rank))
               for n in counts]
    per_direction = max(0.0, (seconds[1] - seconds[0]) / (counts[1] - counts[0]))
    return {"votes": votes, "update": per_direction,
            "update_fixed": max(0.0, seconds[0] - counts[0] * per_direction)}


def update_signs(count: int) -> torch.Tensor:
    """Votes for the timed updates: one in three -1."""
    return torch.where(torch.arange(count) % 3 == 0, -1, 1).to(torch.int8)


def exact_sum_seconds(state, group: int = 16) -> float:
    """Seconds per perturbation of the part every family pays with the exact oracle: per
    token and output row, p_v expm1(e_v) summed and the target's e picked (accumulate)."""
    tokens, vocab = state.probs.shape
    step = max(1, PRODUCT_BUDGET // (group * tokens))
    change = torch.full((group, tokens, step), 1e-3)
    spread = torch.zeros(group, tokens)
    at_target = torch.zeros_like(spread)

    def run():
        for start in range(0, vocab, step):
            rows = slice(start, min(vocab, start + step))
            accumulate(state, rows, change[:, :, : rows.stop - start], at_target, spread)

    return timed(run) / group


def iteration_part(size: dict) -> dict:
    """(a): seconds per iteration of every kind at the given head, extrapolated to m: the
    base logits (prepare, once per iteration), the m votes and the update."""
    inputs, weight = head_inputs(size["vocab"], size["width"], size["tokens"])
    prepare = timed(lambda: build_state(inputs, weight, PLAIN, torch.float32))
    state = build_state(inputs, weight, PLAIN, torch.float32)
    m, out = size["m"], {}
    dense = dense_seconds(state, size)
    out["gaussian"] = {"votes_s": m * dense["votes"], "update_s": m * dense["update"],
                       "gemm_bound_votes_s": m * dense["gemm"],
                       "exact_sum_floor_votes_s": m * exact_sum_seconds(state),
                       "measured": f"{size['dense']} perturbations, extrapolated to m = {m}"}
    for name, rank in KINDS.items():
        if rank is not None:
            low = low_rank_seconds(state, size, rank)
            out[name] = {"votes_s": m * low["votes"],
                         "update_s": low["update_fixed"] + m * low["update"],
                         "measured": f"votes of {size['low']} directions and updates of "
                                     f"{size['update']} and {3 * size['update']} (fastest "
                                     f"of {REPEATS} each), extrapolated to m = {m}"}
    for row in out.values():
        row["prepare_s"] = prepare
        row["iteration_s"] = prepare + row["votes_s"] + row["update_s"]
    return out


def sparse_problem():
    """tests/compo/test_estimator.py's problem: an s-sparse gradient g over d = 100,000
    entries (support S), f(x) = g.x + |x_S|^2 / 2 at x = 0."""
    generator = torch.Generator().manual_seed(0)
    size = SPARSE_SHAPE[0] * SPARSE_SHAPE[1]
    support = torch.randperm(size, generator=generator)[:SPARSE_S]
    gradient = torch.zeros(size)
    gradient[support] = torch.randn(SPARSE_S, generator=generator)
    return gradient, support


def support_entries(keys, support: torch.Tensor, rank: int | None) -> torch.Tensor:
    """z_i at the support [m, s]: only those entries (or factors) are generated."""
    if rank is None:
        return torch.cat([normals(keys, int(j), 1) for j in support], dim=1)
    a, b = low_rank_factors(keys, SPARSE_SHAPE, rank)  # [m, r, 100], [m, r, 1000]
    rows, cols = support // SPARSE_SHAPE[1], support % SPARSE_SHAPE[1]
    return (a[:, :, rows] * b[:, :, cols]).sum(1) / math.sqrt(rank)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0))


def sparse_cosines(rank: int | None, ms: tuple[int, ...], seed: int) -> dict:
    """(b): cosine to the true gradient of sum_{i < m} y_i z_i and of its clipped unit."""
    gradient, support = sparse_problem()
    keys = [direction_key(seed, 0, index) for index in range(max(ms))]
    z_s = support_entries(keys, support, rank)
    g_s = gradient[support]
    change = SPARSE_RADIUS * z_s @ g_s + 0.5 * SPARSE_RADIUS**2 * (z_s**2).sum(1)
    votes = torch.where(change < 0, -1, 1).to(torch.int8)  # -1: the perturbed point is better
    out = {}
    for m in ms:
        if rank is None:
            total = vote_weighted_sum(seed, 0, torch.arange(m), votes[:m], SPARSE_SHAPE,
                                      1 << 22)
        else:
            total = low_rank_update(seed, votes[:m], SPARSE_SHAPE, rank)
        unit = normalise(total)
        clipped = clip_small(unit, clip_threshold(unit, CLIP))
        out[m] = (cosine(unit, gradient), cosine(clipped, gradient))
    return out


def statistics_part(ms: tuple[int, ...], seeds: int) -> dict:
    """(b) for every kind: mean (and min) over `seeds` direction seeds, per m."""
    out = {}
    for name, rank in KINDS.items():
        runs = [sparse_cosines(rank, ms, seed) for seed in range(seeds)]
        out[name] = {m: {"cosine": round(sum(r[m][0] for r in runs) / seeds, 4),
                         "clipped_cosine": round(sum(r[m][1] for r in runs) / seeds, 4),
                         "clipped_min": round(min(r[m][1] for r in runs), 4)} for m in ms}
    return out


def run_parts(args) -> dict:
    """Run (a) and (b); (c) and (d) are reported as not measured without the config."""
    mode = "quick" if args.quick else "full"
    size, ms = SIZES[mode], SPARSE_M[mode]
    started = time.perf_counter()
    timing = iteration_part(size)
    statistics = statistics_part(ms, SPARSE_SEEDS[mode])
    at = max(ms)
    demo = demo_part(Path(args.workdir)) if full_runs() and not args.quick else None
    learned = learning_part(Path(args.workdir)) if service_low_rank() and not args.quick \
        else None
    shares = {name: None if demo is None else demo["equal_m"][name]["both_share"]
              for name in KINDS}
    return {
        "mode": mode, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "kernel_target": target_flag(),
        "instruction_env": {name: os.environ.get(name) for name in ISA_ENV},
        "torch": torch.__version__, "low_rank_products": implementation(),
        "head": [size["vocab"], size["width"]], "tokens": size["tokens"], "m": size["m"],
        "iteration_seconds": {name: round(row["iteration_s"], 2) for name, row in timing.items()},
        "timing": {name: {key: round(value, 2) if isinstance(value, float) else value
                          for key, value in row.items()} for name, row in timing.items()},
        "gaussian_over_low_rank": {name: round(timing["gaussian"]["iteration_s"]
                                               / row["iteration_s"], 1)
                                   for name, row in timing.items() if name != "gaussian"},
        "cosine_m": at, "sparse_seeds": SPARSE_SEEDS[mode],
        "cosine": {name: rows[at]["cosine"] for name, rows in statistics.items()},
        "clipped_cosine": {name: rows[at]["clipped_cosine"] for name, rows in statistics.items()},
        "cosine_vs_m": {name: {str(m): row for m, row in rows.items()}
                        for name, rows in statistics.items()},
        "both_share": shares, "demo": demo or (QUICK_NOTE if args.quick else NOT_MEASURED),
        "learning_length_contrast": {name: None if learned is None or name not in learned
                                     else learned[name]["contrast"] for name in KINDS},
        "learning": learned or (QUICK_NOTE if args.quick else LEARNING_NOTE),
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(result: dict) -> str:
    """The README table: one row per kind."""
    lines = [f"| directions | s / iteration | votes | update | cosine, "
             f"m = {result['cosine_m']} | clipped cosine | demo both-share |",
             "|---|---|---|---|---|---|---|"]
    for name in KINDS:
        row = result["timing"][name]
        share = result["both_share"][name]
        lines.append(f"| {name} | {row['iteration_s']:.1f} | {row['votes_s']:.1f} | "
                     f"{row['update_s']:.1f} | "
                     f"{result['cosine'][name]:.3f} | {result['clipped_cosine'][name]:.3f} | "
                     f"{'not measured' if share is None else f'{share:.2f}'} |")
    dense = result["timing"]["gaussian"]
    lines.append(f"\nbase logits (prepare, in every row): {dense['prepare_s']:.1f} s; "
                 f"Gaussian votes at the GEMM bound: {dense['gemm_bound_votes_s']:.1f} s; the "
                 f"exact change's softmax-weighted sum alone (torch path: Gaussian): "
                 f"{dense['exact_sum_floor_votes_s']:.1f} s; low-rank products: "
                 f"{result['low_rank_products']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--quick", action="store_true", help="a small head and few m (smoke; "
                        "no demo runs)")
    parser.add_argument("--workdir", default="runs/low_rank_bench", help="the demo runs' "
                        "directories")
    args = parser.parse_args()
    result = run_parts(args)
    if not args.json:
        print(table(result))
        print(f"(c) demo: {result['demo']}\n(d) learning: {result['learning']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
