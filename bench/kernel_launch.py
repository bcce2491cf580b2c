"""Every kernel variant bench/kernel_compile.py compiles, launched once against the eager path.

The fused oracle kernel (each products type, soft-cap and tile) against token_changes (torch
matmul on generated blocks), generation's row products against perturbation_products on
the same directions, the direction generator against the CPU definition bit for bit. On
CUDA (bench/gpu_check.sh) at a small Mistral-like width; with --device cpu in Triton's
interpreter (run with TRITON_INTERPRET=1) at toy sizes, where kernels that load bf16 are
skipped (numpy has no bfloat16). Prints a table and one JSON line: {"device", "launched": [{"name",
"status", "max_relative_difference"}], "passed"}.

  python bench/kernel_launch.py [--device cuda] [--defaults-only]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from kernel_compile import Variant, variants  # bench/ (this script's directory is on sys.path)

from compo.kernels import fused
from compo.model.head import Head
from compo.model.scoring import HeadInputs
from compo.oracle import build_state, token_changes
from compo.perturbation import direction_key, direction_rows, normals, table_tensor
from compo.service_oracle.generation import perturbation_products

SIZES = {"cuda": {"tokens": 512, "vocab": 4000, "width": 1024},
         "cpu": {"tokens": 40, "vocab": 150, "width": 64}}
RADIUS = 5e-4
CAP = 30.0  # Gemma-2's final soft-cap
TOLERANCE = 1e-3  # relative: float32 sums in another order, bf16 x bf16 products exact
DIRECTIONS = 2


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def token_check(variant: Variant, device: torch.device, size: dict) -> float:
    """The fused kernel with this variant's tile against the eager oracle's per-token terms."""
    g = torch.Generator().manual_seed(7)
    dtype, tile = variant.tags["dtype"], variant.tags["tile"]
    hidden = (3 * torch.randn(size["tokens"], size["width"], generator=g)).to(device, dtype)
    weight = (0.3 * torch.randn(size["vocab"], size["width"], generator=g)).to(device)
    targets = torch.randint(0, size["vocab"], (size["tokens"],), generator=g).to(device)
    segment = torch.zeros(size["tokens"], dtype=torch.int64, device=device)
    cap = CAP if variant.tags["cap"] else None
    state = build_state(HeadInputs(hidden, targets, segment, 1), weight, Head(None, 1.0, cap),
                        dtype)
    keys = [direction_key(0, 3, i) for i in range(DIRECTIONS)]
    got = fused.fused_token_changes(hidden, keys, table_tensor(device), state.probs, targets,
                                    RADIUS, state.base_logits, cap, tile)
    want = token_changes(state, keys, RADIUS, chunk_rows=size["vocab"])
    return max(relative(g_, w_) for g_, w_ in zip(got, want, strict=True))


def row_check(variant: Variant, device: torch.device, size: dict) -> float:
    """Generation's row products against perturbation_products on the made directions."""
    keys = [direction_key(0, 4, i) for i in range(DIRECTIONS)]
    hidden = torch.randn(DIRECTIONS, size["width"], generator=torch.Generator().manual_seed(8))
    hidden = hidden.to(device, variant.tags["dtype"])
    got = fused.fused_row_products(hidden, keys, table_tensor(device), size["vocab"])
    rows = direction_rows(keys, 0, size["vocab"], size["width"], device)
    return relative(got, perturbation_products(rows, hidden))


def fill_check(variant: Variant, device: torch.device, size: dict) -> float:
    """The generator against the CPU definition: 0.0 when bit-identical, else inf."""
    keys = [direction_key(0, 5, i) for i in range(DIRECTIONS)]
    count = size["vocab"] * size["width"] - 3
    made = normals(keys, 3, count, device, variant.tags["dtype"], generator="triton")
    same = torch.equal(made.float().cpu(), normals(keys, 3, count))
    return 0.0 if same else float("inf")


CHECKS = {"token_changes_kernel": token_check, "row_products_kernel": row_check,
          "fill_kernel": fill_check}


def launch(variant: Variant, device: torch.device) -> dict:
    row = {"name": variant.name, "default": variant.default}
    loads_bf16 = variant.kernel != "fill_kernel" and variant.tags["dtype"] == torch.bfloat16
    if device.type == "cpu" and loads_bf16:
        return {**row, "status": "skipped: no bfloat16 in the interpreter",
                "max_relative_difference": None}
    try:
        difference = CHECKS[variant.kernel](variant, device, SIZES[device.type])
    except Exception as error:  # a variant that fails to launch is a row of the table
        return {**row, "status": f"failed: {str(error).strip().splitlines()[0][:200]}",
                "max_relative_difference": None}
    status = "passed" if difference <= TOLERANCE else "differs"
    return {**row, "status": status, "max_relative_difference": difference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=sorted(SIZES))
    parser.add_argument("--defaults-only", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and not fused.interpreting():
        parser.error("on CPU the kernels run only in Triton's interpreter: set "
                     f"{fused.INTERPRET_ENV}=1")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; use --device cpu with TRITON_INTERPRET=1")
    rows = [launch(variant, device) for variant in variants(args.defaults_only)]
    for row in rows:
        difference = row["max_relative_difference"]
        print(f"{row['name']:44} {row['status']:40} "
              f"{'' if difference is None else f'{difference:.2e}'}")
    passed = all(row["status"] == "passed" or row["status"].startswith("skipped")
                 for row in rows)
    print(json.dumps({"device": args.device, "launched": rows, "passed": passed}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
