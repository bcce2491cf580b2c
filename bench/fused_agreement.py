"""The fused kernel against the eager oracle: log-prob changes, votes, seconds per perturbation.

Random head inputs of a model's shape (default Mistral-7B's head: N = 1000 completion
tokens, d = 4096, V = 32000; bf16 hidden states on CUDA), one pair, with and without a
Gemma-2 style soft-cap. For each perturbation both paths compute the pair's log-prob
changes; the JSON line gives their largest relative difference, the share of equal votes,
and each path's seconds per perturbation (interleaved).

  python bench/fused_agreement.py                       # CUDA, Mistral-7B head shape
  TRITON_INTERPRET=1 python bench/fused_agreement.py --device cpu --tokens 40 --hidden 64 \
      --vocab 100 --perturbations 3                     # CPU, Triton's interpreter
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from compo.kernels.fused import fused_available
from compo.model.head import Head
from compo.model.scoring import HeadInputs
from compo.oracle import build_state, logprob_changes, pair_improved
from compo.perturbation import direction_key, plan_blocks

RADIUS = 5e-4
SOFT_CAP = 30.0  # Gemma-2's final logit soft-cap
WEIGHT_SCALE = 0.02  # output-layer entries of a trained model's size
TINY = 1e-30  # relative differences of exact zeros count as zero


def make_state(args, cap: float | None):
    """A prepared oracle state over random hidden states, head and targets (one pair)."""
    g = torch.Generator().manual_seed(0)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    hidden = torch.randn(args.tokens, args.hidden, generator=g).to(args.device, dtype)
    weight = (WEIGHT_SCALE * torch.randn(args.vocab, args.hidden, generator=g)).to(args.device)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(args.device)
    segment = (torch.arange(args.tokens) * 2 // args.tokens).to(args.device)  # two responses
    return build_state(HeadInputs(hidden, targets, segment, 2), weight, Head(None, 1.0, cap),
                       dtype)


def timed(function, device: str):
    started = time.perf_counter()
    result = function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def compare(args, cap: float | None) -> dict:
    """Both paths on the same perturbations: differences, vote agreement, seconds."""
    state = make_state(args, cap)
    chunk_rows = plan_blocks(1, state.shape, None, args.device)[1]
    keys = [direction_key(0, 1, index) for index in range(args.perturbations)]
    for fused in (True, False):  # warm-up (compiles the kernel)
        logprob_changes(state, keys[:1], RADIUS, chunk_rows, fused)
    worst, same, seconds = 0.0, 0, {"fused": 0.0, "eager": 0.0}
    for key in keys:
        fused, fused_s = timed(lambda k=key: logprob_changes(state, [k], RADIUS, chunk_rows,
                                                             True), args.device)
        eager, eager_s = timed(lambda k=key: logprob_changes(state, [k], RADIUS, chunk_rows),
                               args.device)
        seconds["fused"] += fused_s
        seconds["eager"] += eager_s
        worst = max(worst, float(((fused - eager).abs() / eager.abs().clamp_min(TINY)).max()))
        same += bool(torch.equal(pair_improved(fused), pair_improved(eager)))
    return {
        "max_relative_difference": worst, "vote_agreement": same / len(keys),
        "fused_seconds_per_perturbation": seconds["fused"] / len(keys),
        "eager_seconds_per_perturbation": seconds["eager"] / len(keys),
        "fused_speedup": seconds["eager"] / seconds["fused"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=1000, help="N, both responses")
    parser.add_argument("--hidden", type=int, default=4096, help="d")
    parser.add_argument("--vocab", type=int, default=32000, help="V")
    parser.add_argument("--perturbations", type=int, default=50)
    args = parser.parse_args()
    fused_available(torch.device(args.device), required=True)
    results = {"no_cap": compare(args, None), f"soft_cap_{SOFT_CAP:g}": compare(args, SOFT_CAP)}
    device = (torch.cuda.get_device_name(torch.device(args.device))
              if args.device.startswith("cuda") else "cpu (Triton interpreter)")
    print(json.dumps({"benchmark": "fused_agreement", "device": device,
                      "shape": {"tokens": args.tokens, "hidden": args.hidden,
                                "vocab": args.vocab},
                      "perturbations": args.perturbations, **results}))


if __name__ == "__main__":
    main()
