"""Every Triton kernel variant the project can launch, compiled for real GPUs without one.

Variants: the fused oracle kernel (float32 / bf16 / fp16 hidden states, soft-capped or not,
each tile of compo/kernels/fused.py's CANDIDATE_TILES; a head bias only moves the base
logits, outside the kernel, so it makes no variant), generation's row-products kernel and
the direction generator (float32 / bf16 / fp16 out). Each is compiled to a cubin per target
with Triton's bundled ptxas, with the integer specialisation of a Mistral-7B-shape launch
(pointers 16-byte aligned, sizes divisible by 16 where they are); registers and spill bytes
come from that ptxas run's `-v` log, shared memory from the kernel's metadata. `default`
marks the configuration `products: auto` launches. Also prints the direction generator's
kernel launches per accepted iteration at Mistral shape (computed from the planners).

  python bench/kernel_compile.py [--targets sm_80,sm_90] [--defaults-only] [--json]

With --json the last line is {"kernels": [{"name", "target", "default", "compiled",
"registers", "spill_bytes", "shared_bytes"}, ...], "launches": {...}}. Exit status 1 when a
variant fails to compile or a default spills. Needs triton; no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

from compo.estimator import plan_shards
from compo.kernels import fused
from compo.perturbation import BLOCK_ELEMENTS, LANES, PIECE_WORDS, plan_blocks

TARGETS = {"sm_80": 80, "sm_90": 90}
WARP = 32
MISTRAL = {"vocab": 32000, "width": 4096, "tokens": 1000, "m": 1800, "workers": 30}
ALIGN = 16  # Triton marks ints and pointers divisible by 16 at launch (tt.divisibility)
POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
DTYPE_OF_DOT = {"ieee": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REGISTERS = re.compile(r"Used (\d+) registers")
SPILLS = re.compile(r"(\d+) bytes spill stores")


@dataclass(frozen=True)
class Variant:
    """One compiled kernel: its arguments' types, constexprs and launch options."""

    name: str
    kernel: str  # function name in compo/kernels/triton_kernels.py
    signature: dict[str, str]
    constexprs: dict
    ints: dict[str, int]  # the Mistral-shape values of its integer arguments
    options: dict
    default: bool
    tags: dict = field(default_factory=dict)  # what bench/gpu_check.sh's launch step needs


def token_variants() -> list[Variant]:
    """The fused oracle kernel: every products type x soft-cap x candidate tile."""
    out = []
    for dot, dtype in DTYPE_OF_DOT.items():
        for cap in (False, True):
            for tile in fused.CANDIDATE_TILES:
                sig = {"hidden_ptr": POINTER[dtype], "keys_ptr": "*i64", "table_ptr": "*fp32",
                       "probs_ptr": "*fp32", "base_ptr": "*fp32", "targets_ptr": "*i64",
                       "spread_ptr": "*fp32", "target_ptr": "*fp32", "n_tokens": "i32",
                       "n_rows": "i32", "words_per_row": "i32", "stride_h": "i32",
                       "factor": "fp32", "cap": "fp32"}
                consts = {"HAS_CAP": cap, "DOT": dot, "BLOCK_N": tile.tokens,
                          "BLOCK_V": tile.rows, "BLOCK_W": tile.words}
                ints = {"n_tokens": MISTRAL["tokens"], "n_rows": MISTRAL["vocab"],
                        "words_per_row": MISTRAL["width"] // LANES, "stride_h": MISTRAL["width"]}
                name = (f"token_changes {dot}{' capped' if cap else ''} "
                        f"{tile.tokens}x{tile.rows}x{LANES * tile.words} w{tile.warps}")
                out.append(Variant(name, "token_changes_kernel", sig, consts, ints,
                                   tile.launch_options(), fused.TILES[dot, cap] == tile,
                                   {"dtype": dtype, "cap": cap, "tile": tile}))
    return out


def generator_variants() -> list[Variant]:
    """Generation's row products (per hidden-state dtype) and the direction generator (per
    dtype it writes)."""
    out, tile = [], fused.ROW_TILE
    block = plan_blocks(1, (MISTRAL["vocab"], MISTRAL["width"]), None, "cuda")[1]
    for dtype in POINTER:
        name = str(dtype).removeprefix("torch.")
        sig = {"hidden_ptr": POINTER[dtype], "keys_ptr": "*i64", "table_ptr": "*fp32",
               "out_ptr": "*fp32", "n_rows": "i32", "words_per_row": "i32", "stride_h": "i32"}
        ints = {"n_rows": MISTRAL["vocab"], "words_per_row": MISTRAL["width"] // LANES,
                "stride_h": MISTRAL["width"]}
        out.append(Variant(f"row_products {name}", "row_products_kernel", sig,
                           {"BLOCK_V": tile.rows, "BLOCK_W": tile.words}, ints,
                           tile.launch_options(), True, {"dtype": dtype}))
        sig = {"keys_ptr": "*i64", "table_ptr": "*fp32", "out_ptr": POINTER[dtype],
               "start": "i32", "count": "i32"}
        out.append(Variant(f"fill {name}", "fill_kernel", sig, {"BLOCK_W": fused.FILL_WORDS},
                           {"start": 0, "count": block * MISTRAL["width"]}, {}, True,
                           {"dtype": dtype}))
    return out


def variants(defaults_only: bool = False) -> list[Variant]:
    every = token_variants() + generator_variants()
    return [v for v in every if v.default or not defaults_only]


def compile_one(variant: Variant, target: str) -> dict:
    """Compile for `target`; the ptxas -v log of that very compile gives the figures."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from compo.kernels import triton_kernels

    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas's -v output (to stdout)
    knobs.compilation.always_compile = True
    fn = getattr(triton_kernels, variant.kernel)
    signature = {**variant.signature, **{k: "constexpr" for k in variant.constexprs}}
    aligned = {name for name, kind in variant.signature.items() if kind.startswith("*")}
    aligned |= {name for name, value in variant.ints.items() if value % ALIGN == 0}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", ALIGN]] for name in aligned}
    row = {"name": variant.name, "target": target, "default": variant.default}
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(fn, signature, variant.constexprs, attrs),
                                    target=GPUTarget("cuda", TARGETS[target], WARP),
                                    options=variant.options)
    except Exception as error:  # a variant that does not compile is a row of the table
        return {**row, "compiled": False, "registers": None, "spill_bytes": None,
                "shared_bytes": None, "error": str(error).strip().splitlines()[0][:300]}
    text = log.getvalue()
    return {**row, "compiled": True, "registers": int(REGISTERS.search(text).group(1)),
            "spill_bytes": int(SPILLS.search(text).group(1)),
            "shared_bytes": int(kernel.metadata.shared)}


def compile_all(chosen: list[Variant], targets: list[str], jobs: int) -> list[dict]:
    """Every variant for every target, `jobs` compiles at a time (a private cache)."""
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="kernel-compile-"))
    work = [(variant, target) for variant in chosen for target in targets]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(compile_one, *zip(*work, strict=True)))


def torch_ops_per_piece() -> int:
    """Kernel launches fill_torch makes per PIECE_WORDS words (CUDA's path without triton),
    counted as the non-view aten ops it dispatches on CPU for one piece and for two."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from compo.perturbation import fill_torch

    class Count(TorchDispatchMode):
        launches = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            returns = func._schema.returns
            if not any(r.alias_info is not None and not r.alias_info.is_write for r in returns):
                Count.launches += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for pieces in (1, 2):
        Count.launches = 0
        with Count():
            fill_torch(torch.empty(pieces * PIECE_WORDS * LANES), 1, 0)
        counts.append(Count.launches)
    return counts[1] - counts[0]


def generator_launches(count: int, elements: int, per_piece: int) -> dict[str, int]:
    """Launches of one normals() call for `count` directions of `elements` values each."""
    pieces = math.ceil(elements / LANES / PIECE_WORDS)
    return {"triton": 1, "torch": count * (1 + pieces * per_piece)}


def launches_per_iteration(shape: dict = MISTRAL) -> dict:
    """Direction-generator launches per worker for one accepted iteration at `shape`: the
    votes (eager products: moved MLPs or products: eager; fused products make none) and the
    rebuild of the worker's row shard of sum y_i z_i, as the planners split them."""
    vocab, width, m, workers = shape["vocab"], shape["width"], shape["m"], shape["workers"]
    per_piece, budget = torch_ops_per_piece(), BLOCK_ELEMENTS["cuda"]
    mine = math.ceil(m / workers)
    group, chunk = plan_blocks(mine, (vocab, width), budget, "cuda")
    votes = {kind: math.ceil(mine / group) * math.ceil(vocab / chunk) * n for kind, n in
             generator_launches(group, chunk * width, per_piece).items()}
    shard = len(plan_shards(vocab, workers)[0])
    group, chunk = plan_blocks(m, (vocab, width), budget, "cuda")
    calls = math.ceil(m / group) * math.ceil(shard / chunk)
    rebuild = {kind: calls * n for kind, n in
               generator_launches(group, min(chunk, shard) * width, per_piece).items()}
    tile = fused.tile_for(torch.bfloat16, None)
    fused_votes = math.ceil(mine / fused.fused_group(shape["tokens"], vocab, budget, tile))
    return {"shape": shape, "torch_launches_per_piece": per_piece,
            "votes_eager": votes, "rebuild": rebuild, "fused_vote_launches": fused_votes,
            "total": {k: votes[k] + rebuild[k] for k in votes}}


def print_table(rows: list[dict]) -> None:
    print(f"{'kernel':44} {'target':6} {'default':7} {'regs':>5} {'spill B':>8} "
          f"{'shared B':>9}")
    for row in rows:
        figures = (f"{row['registers']:>5} {row['spill_bytes']:>8} {row['shared_bytes']:>9}"
                   if row["compiled"] else f"  failed: {row['error']}")
        print(f"{row['name']:44} {row['target']:6} {'yes' if row['default'] else '':7} "
              f"{figures}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="sm_80,sm_90",
                        help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the configurations products: auto launches")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--json", action="store_true", help="a JSON object on the last line")
    args = parser.parse_args()
    targets = args.targets.split(",")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}; use {', '.join(TARGETS)}")
    if "triton" in sys.modules:
        parser.error("triton is already imported; run this script in a fresh process")
    os.environ.pop(fused.INTERPRET_ENV, None)  # the interpreter replaces what is compiled
    from triton import knobs

    if not hasattr(knobs.nvidia, "dump_ptxas_log"):
        parser.error("this triton cannot hand over ptxas's log (knobs.nvidia.dump_ptxas_log: "
                     "triton 3.9 has it, 3.4 does not); pip install -U triton")
    started = time.perf_counter()
    rows = compile_all(variants(args.defaults_only), targets, args.jobs)
    print_table(rows)
    launches = launches_per_iteration()
    print(f"direction-generator launches per worker per accepted iteration at Mistral-7B "
          f"shape (m = {MISTRAL['m']}, {MISTRAL['workers']} workers): "
          f"{launches['total']['torch']:,} with torch ops, {launches['total']['triton']:,} "
          f"with the Triton generator; fused votes: {launches['fused_vote_launches']} "
          f"launches, no generator")
    print(f"{len(rows)} compiles in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps({"kernels": rows, "launches": launches}))
    failed = [r for r in rows if not r["compiled"] or (r["default"] and r["spill_bytes"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
