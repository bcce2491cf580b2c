"""The cost of moving the MLPs of the last layers (compo.perturb.mlp_last_layers: k) against
the output layer alone, and against the bare operations that bound it.

Per perturbation with k moved layers the oracle makes a direction over the head and the k
MLPs, reruns the k layers and the final norm on the pair's tokens (in --tail-dtype, float64
by default as compo.perturb.tail_dtype), and computes the head's change from (h' - h) W^T
and h' z^T. The bound: the bare forward of those k layers in the same dtype on the captured
inputs (weights fixed, no direction made) plus two GEMMs of the
head's shape, timed in the same run. Head-only, head + k MLPs and the bound interleaved
round by round; votes of both oracles on the same pair. Prints one JSON line:
  cost_ratio     = seconds per perturbation, head + k MLPs / head only
  limit_fraction = bound per perturbation / ours (1.0: no overhead over the bare work)

  python bench/moved_layers.py                       # CPU, scaled Mistral shape, k = 2
  python bench/moved_layers.py --shape mistral-proportions --layers 2 [--tail-dtype float32]
"""

from __future__ import annotations

import argparse
import json

from perturbation_throughput import SHAPES, build_model, describe, make_pair, timed

from compo.config import ComPOConfig
from compo.oracle import LikelihoodOracle

RADIUS = 5e-4  # the paper's Mistral-7B radius


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="scaled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2, help="k, moved MLPs (last layers)")
    parser.add_argument("--tail-dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--perturbations", type=int, default=8, help="per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=64)
    return parser.parse_args()


def bound_call(oracle: LikelihoodOracle, state, count: int):
    """The bare work of `count` perturbations: k layers' forward (in the tail's dtype) + two
    float32 head GEMMs each."""
    head = state.master[: oracle.layout.head.rows]

    def run():
        for _ in range(count):
            hidden = oracle.tail.head_input(state.tail_batches, {})
            (hidden - state.inputs.hidden).float() @ head.T
            hidden.float() @ head.T

    return run


def main() -> None:
    args = parse_args()
    model = build_model(args.shape, args.device)
    pair = make_pair(args.prompt_tokens, args.completion_tokens,
                     SHAPES[args.shape]["vocab_size"])
    oracles, states = {}, {}
    for name, k in (("head", 0), ("moved", args.layers)):
        config = ComPOConfig(radius=RADIUS, products="eager",
                             perturb={"mlp_last_layers": k, "tail_dtype": args.tail_dtype})
        oracles[name] = LikelihoodOracle(model, config, pad_id=0)
        states[name] = oracles[name].prepare([pair], oracles[name].master_weight())
    indices = list(range(args.perturbations))
    calls = {name: (lambda n=name: oracles[n].votes(states[n], 0, 0, indices))
             for name in oracles}
    calls["bound"] = bound_call(oracles["moved"], states["moved"], args.perturbations)
    for call in calls.values():  # warm-up
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(args.rounds):
        for name, call in calls.items():
            best[name] = min(best[name], timed(call, args.device) / args.perturbations)
    votes = {name: oracles[name].votes(states[name], 0, 0, list(range(64))) for name in oracles}
    moved = oracles["moved"].layout
    print(json.dumps({
        "shape": args.shape, "device": describe(args.device), "moved_layers": args.layers,
        "tail_dtype": args.tail_dtype,
        "tokens": args.prompt_tokens + args.completion_tokens,
        "stack_rows": moved.shape[0], "head_rows": moved.head.rows,
        "moved_parameters_over_head": round((moved.shape[0] - moved.head.rows)
                                            / moved.head.rows, 2),
        "head_only_s_per_perturbation": round(best["head"], 4),
        "moved_s_per_perturbation": round(best["moved"], 4),
        "bound_s_per_perturbation": round(best["bound"], 4),
        "cost_ratio": round(best["moved"] / best["head"], 2),
        "limit_fraction": round(best["bound"] / best["moved"], 3),
        "votes_improved_of_64": {name: int((v == -1).sum()) for name, v in votes.items()},
    }))


if __name__ == "__main__":
    main()
