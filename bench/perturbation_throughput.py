"""Perturbations per second: our likelihood oracle against its limit and the reference method.

The limit: per perturbation the oracle needs one product h z^T (2 N d V FLOPs); the bare
GEMM of that shape, same dtypes, on a direction made beforehand, is timed in the same run
(gemm_bound_per_s), and limit_fraction = ours_per_s / gemm_bound_per_s.
Reference method, re-created: per perturbation, z drawn on the host with numpy (float64),
W + r z rounded to bf16 and copied to the device, then two full forward passes (base and
perturbed) of the whole model over both responses. Ours: the body runs once, then each
perturbation is a counter-based direction generated where it is used and an exact
log-prob change from h z^T. Same model (random bf16 weights), same pair; ours, the bare
GEMM and the reference interleaved round by round in one run. Prints one JSON line.

  python bench/perturbation_throughput.py                       # CPU, scaled Mistral shape
  python bench/perturbation_throughput.py --shape mistral-proportions   # 7B's body:head
  python bench/perturbation_throughput.py --device cuda --shape mistral-7b
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np
import torch

from compo.config import ComPOConfig
from compo.data.formats import TokenizedPair
from compo.model.head import output_layer
from compo.model.loading import prepare_model
from compo.oracle import (
    LikelihoodOracle,
    combine,
    exact_products,
    pair_improved,
    product_operand,
)
from compo.perturbation import direction, direction_key

SHAPES = {  # Mistral-7B's layer proportions; "scaled" divides width and depth by 4, and
    # "mistral-proportions" also the vocabulary by 16, so that the body has 7B's ~53x the
    # head's parameters (FLOPs per token) on a CPU-sized model
    "scaled": dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=2, vocab_size=32000),
    "mistral-proportions": dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                                num_attention_heads=8, num_key_value_heads=2, vocab_size=2000),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2,  # smoke runs
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
}
RADIUS = 5e-4
# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs a
# spinning thread takes the core a descheduled one needs, and every parallel region waits
# (measured here: 2-3x slower oracle, the single big GEMM barely affected). Set it to
# ACTIVE to measure with spinning.
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
FIRST_TOKEN = 3  # random token ids start above the special tokens


class PeakMemory:
    """Peak bytes above the starting level while the block runs (CUDA allocator or RSS)."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self.running = rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss() - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()


def rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def build_model(shape: str, device: str):
    """Random-weight bf16 Mistral-architecture model."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(max_position_embeddings=4096, tie_word_embeddings=False,
                           **SHAPES[shape])
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = MistralForCausalLM(config)
    torch.set_default_dtype(previous)
    return prepare_model(model)


def make_pair(prompt_tokens: int, completion_tokens: int, vocab: int) -> TokenizedPair:
    """One pair with random tokens: completion_tokens split over the two responses."""
    g = torch.Generator().manual_seed(1)
    half = completion_tokens // 2
    ids = torch.randint(FIRST_TOKEN, vocab, (prompt_tokens + 2 * half,), generator=g).tolist()
    return TokenizedPair(ids[:prompt_tokens], ids[prompt_tokens:prompt_tokens + half],
                         ids[prompt_tokens + half:], "bench")


@torch.no_grad()
def full_forward_logprobs(model, pair: TokenizedPair) -> torch.Tensor:
    """Both responses' log-probs from one full forward pass (what the reference does)."""
    rows = [pair.prompt_ids + pair.chosen_ids, pair.prompt_ids + pair.rejected_ids]
    ids = torch.tensor(rows, device=output_layer(model).weight.device)
    logprobs = model(input_ids=ids).logits.float().log_softmax(-1)
    start = len(pair.prompt_ids) - 1
    targets = ids[:, start + 1:]
    return logprobs[:, start:-1].gather(2, targets[..., None]).squeeze(2).sum(1).double()


def reference_vote(model, pair, base_head: torch.Tensor, z: np.ndarray | None = None) -> int:
    """One perturbation the reference way: host float64 z, bf16 weights, two forwards."""
    head = output_layer(model)
    if z is None:
        z = np.random.standard_normal(tuple(base_head.shape))
    perturbed = (base_head.cpu().double() + RADIUS * torch.from_numpy(z)).to(torch.bfloat16)
    base = full_forward_logprobs(model, pair)
    head.weight.data = perturbed.to(head.weight.device)
    moved = full_forward_logprobs(model, pair)
    head.weight.data = base_head
    return combine(pair_improved(moved - base), "any")


def timed(function, device: str) -> float:
    """Seconds of one call (nothing else runs in this process meanwhile)."""
    started = time.perf_counter()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def peak_memory(function, device: str) -> int:
    """Peak extra bytes of one call (CPU: sampled by a thread, so never during timing)."""
    with PeakMemory(device) as memory:
        function()
    return memory.peak


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="scaled", choices=sorted(SHAPES))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=512, help="both responses")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--ours-per-round", type=int, default=0, help="0: device default")
    parser.add_argument("--reference-per-round", type=int, default=2)
    parser.add_argument("--agreement", type=int, default=0, help="perturbations compared")
    parser.add_argument("--no-reference", action="store_true",
                        help="only ours and the bare GEMM (the limit), no reference method")
    parser.add_argument("--products", default="auto", choices=["auto", "fused", "eager"],
                        help="the oracle's product path (compo.products)")
    return parser.parse_args()


def body_to_head_params(model) -> float:
    """Parameters of the body (embeddings left out) per parameter of the output layer:
    the FLOP ratio of a full forward pass to the head alone."""
    head = output_layer(model).weight.numel()
    embedding = model.get_input_embeddings().weight.numel()
    return (sum(p.numel() for p in model.parameters()) - head - embedding) / head


def gemm_bound(state, direction_dtype: torch.dtype):
    """The bare product h z^T of the oracle's shape and dtypes on a ready direction."""
    hidden = product_operand(state.inputs.hidden, direction_dtype)
    z = direction(direction_key(0, 9, 0), state.shape, hidden.device, direction_dtype)[None]
    return lambda: exact_products(hidden, z)


def measure(args, model, pair, oracle, state, bound) -> dict:
    """Ours, the bare GEMM and the reference, round by round: seconds per perturbation of
    every round; then the peak memory of each (in calls of their own)."""
    base_head, cuda = output_layer(model).weight.data, args.device.startswith("cuda")
    ours_n = args.ours_per_round or (200 if cuda else 4)
    calls = {
        "ours": (lambda idx: oracle.votes(state, 0, 1, idx), ours_n),
        "gemm": (lambda idx: [bound() for _ in idx], ours_n),
        "reference": (lambda idx: [reference_vote(model, pair, base_head) for _ in idx],
                      args.reference_per_round),
    }
    if args.no_reference:
        del calls["reference"]
    times = {name: [] for name in calls}
    for round_index in range(args.rounds):
        for name, (call, count) in calls.items():
            indices = list(range(round_index * count, (round_index + 1) * count))
            times[name].append(timed(lambda c=call, i=indices: c(i), args.device) / count)
    peaks = {name: peak_memory(lambda c=call: c([0]), args.device)
             for name, (call, _) in calls.items() if name != "gemm"}
    return {"times": times, "peaks": peaks}


def rates(times: dict) -> tuple[dict, dict]:
    """Perturbations per second of each path: from its fastest round (on a shared machine
    the slower rounds measure the other jobs too), and over all rounds."""
    best = {name: 1 / min(seconds) for name, seconds in times.items()}
    overall = {name: len(seconds) / sum(seconds) for name, seconds in times.items()}
    return best, overall


def agreement(args, model, pair, oracle, state) -> tuple[float, int]:
    """Share of perturbations where the reference method (bf16 weights, two forward
    passes, same directions) and our exact oracle vote the same."""
    base_head = output_layer(model).weight.data
    count = args.agreement or (200 if args.device.startswith("cuda") else 12)
    ours_votes = oracle.votes(state, 0, 2, list(range(count)))
    same = 0
    for index in range(count):
        z = direction(direction_key(0, 2, index), tuple(base_head.shape)).double().numpy()
        same += reference_vote(model, pair, base_head, z) == int(ours_votes[index])
    return same / count, count


def main() -> None:
    if WAIT_POLICY_ENV not in os.environ:  # read when torch loads OpenMP: start afresh
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, WAIT_POLICY_ENV: "PASSIVE"})
    args = parse_args()
    cuda = args.device.startswith("cuda")
    model = build_model(args.shape, args.device)
    pair = make_pair(args.prompt_tokens, args.completion_tokens, SHAPES[args.shape]["vocab_size"])
    config = ComPOConfig(radius=RADIUS, direction_dtype="bfloat16" if cuda else "float32",
                         products=args.products)
    oracle = LikelihoodOracle(model, config, pad_id=0)
    prepare_seconds = timed(lambda: oracle.prepare([pair], oracle.master_weight()),
                            args.device)
    state = oracle.prepare([pair], oracle.master_weight())
    bound = gemm_bound(state, oracle.direction_dtype)
    oracle.votes(state, 0, 0, [0])  # warm-up of every path
    bound()
    if not args.no_reference:
        reference_vote(model, pair, output_layer(model).weight.data)
    figures = measure(args, model, pair, oracle, state, bound)
    best, overall = rates(figures["times"])
    peaks = figures["peaks"]
    row = {
        "shape": args.shape, "device": describe(args.device),
        "prompt_tokens": args.prompt_tokens, "completion_tokens": args.completion_tokens,
        "output_layer": list(state.shape), "products": "fused" if oracle.fused(state) else "eager",
        "body_to_head_params": round(body_to_head_params(model), 1),
        "rounds": args.rounds, "omp_wait_policy": os.environ.get(WAIT_POLICY_ENV),
        "ours_per_s": round(best["ours"], 3), "gemm_bound_per_s": round(best["gemm"], 3),
        "limit_fraction": round(best["ours"] / best["gemm"], 3),
        "limit_fraction_all_rounds": round(overall["ours"] / overall["gemm"], 3),
        "ours_seconds_per_1800": round(1800 / best["ours"] + prepare_seconds, 2),
        "gemm_bound_seconds_per_1800": round(1800 / best["gemm"], 2),
        "ours_prepare_seconds": round(prepare_seconds, 3),
        "ours_peak_extra_mib": round(peaks["ours"] / 2**20, 1),
    }
    if not args.no_reference:
        row.update({
            "reference_per_s": round(best["reference"], 4),
            "ratio": round(best["ours"] / best["reference"], 2),
            "ratio_all_rounds": round(overall["ours"] / overall["reference"], 2),
            "reference_seconds_per_1800": round(1800 / best["reference"], 1),
            "reference_peak_extra_mib": round(peaks["reference"] / 2**20, 1),
        })
        share, count = agreement(args, model, pair, oracle, state)
        row.update({"vote_agreement": round(share, 4), "agreement_perturbations": count})
    print(json.dumps(row))


def describe(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"


if __name__ == "__main__":
    main()
