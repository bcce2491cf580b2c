"""Perturbations per second: our likelihood oracle against the reference implementation's method.

Reference method, re-created: per perturbation, z drawn on the host with numpy (float64),
W + r z rounded to bf16 and copied to the device, then two full forward passes (base and
perturbed) of the whole model over both responses. Ours: the body runs once, then each
perturbation is a counter-based direction generated on the device and an exact
log-prob change from h z^T. Same model (random bf16 weights), same pair, A/B interleaved
in one run. Prints one JSON line.

  python bench/perturbation_throughput.py                       # CPU, scaled Mistral shape
  python bench/perturbation_throughput.py --device cuda --shape mistral-7b
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import torch

from compo.config import ComPOConfig
from compo.data.formats import TokenizedPair
from compo.model.head import output_layer
from compo.model.loading import prepare_model
from compo.oracle import LikelihoodOracle, combine, pair_improved
from compo.perturbation import direction, direction_key

SHAPES = {  # Mistral-7B's proportions; "scaled" divides width and depth by 4
    "scaled": dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=2),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8),
}
VOCAB = 32000
RADIUS = 5e-4


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

    config = MistralConfig(vocab_size=VOCAB, max_position_embeddings=4096,
                           tie_word_embeddings=False, **SHAPES[shape])
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = MistralForCausalLM(config)
    torch.set_default_dtype(previous)
    return prepare_model(model)


def make_pair(prompt_tokens: int, completion_tokens: int) -> TokenizedPair:
    """One pair with random tokens: completion_tokens split over the two responses."""
    g = torch.Generator().manual_seed(1)
    half = completion_tokens // 2
    ids = torch.randint(3, VOCAB, (prompt_tokens + 2 * half,), generator=g).tolist()
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


def timed(function, device: str) -> tuple[float, int]:
    """Seconds and peak memory of one call."""
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seconds, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="scaled", choices=sorted(SHAPES))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=512, help="both responses")
    parser.add_argument("--rounds", type=int, default=3, help="A/B interleaved rounds")
    parser.add_argument("--ours-per-round", type=int, default=0, help="0: device default")
    parser.add_argument("--reference-per-round", type=int, default=2)
    parser.add_argument("--agreement", type=int, default=0, help="perturbations compared")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    ours_n = args.ours_per_round or (200 if cuda else 4)
    agreement_n = args.agreement or (200 if cuda else 12)

    model = build_model(args.shape, args.device)
    pair = make_pair(args.prompt_tokens, args.completion_tokens)
    head = output_layer(model)
    base_head = head.weight.data
    config = ComPOConfig(radius=RADIUS, direction_dtype="bfloat16" if cuda else "float32")
    oracle = LikelihoodOracle(model, config, pad_id=0)
    prepare_seconds, _ = timed(lambda: oracle.prepare([pair], oracle.master_weight()),
                               args.device)
    state = oracle.prepare([pair], oracle.master_weight())
    oracle.votes(state, 0, 0, [0])  # warm-up of both paths
    reference_vote(model, pair, base_head)

    ours_s = ref_s = 0.0
    ours_peak = ref_peak = 0
    for round_index in range(args.rounds):
        indices = list(range(round_index * ours_n, (round_index + 1) * ours_n))
        seconds, peak = timed(lambda idx=indices: oracle.votes(state, 0, 1, idx), args.device)
        ours_s, ours_peak = ours_s + seconds, max(ours_peak, peak)
        seconds, peak = timed(lambda: [reference_vote(model, pair, base_head)
                                       for _ in range(args.reference_per_round)], args.device)
        ref_s, ref_peak = ref_s + seconds, max(ref_peak, peak)
    ours_rate = args.rounds * ours_n / ours_s
    ref_rate = args.rounds * args.reference_per_round / ref_s

    ours_votes = oracle.votes(state, 0, 2, list(range(agreement_n)))
    same = 0
    for index in range(agreement_n):
        z = direction(direction_key(0, 2, index), tuple(base_head.shape)).double().numpy()
        same += reference_vote(model, pair, base_head, z) == int(ours_votes[index])
    print(json.dumps({
        "shape": args.shape, "device": describe(args.device),
        "prompt_tokens": args.prompt_tokens, "completion_tokens": args.completion_tokens,
        "ours_per_s": round(ours_rate, 3), "reference_per_s": round(ref_rate, 4),
        "ratio": round(ours_rate / ref_rate, 2),
        "ours_seconds_per_1800": round(1800 / ours_rate + prepare_seconds, 2),
        "reference_seconds_per_1800": round(1800 / ref_rate, 1),
        "ours_prepare_seconds": round(prepare_seconds, 3),
        "ours_peak_extra_mib": round(ours_peak / 2**20, 1),
        "reference_peak_extra_mib": round(ref_peak / 2**20, 1),
        "vote_agreement": round(same / agreement_n, 4), "agreement_perturbations": agreement_n,
    }))


def describe(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os

    return f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"


if __name__ == "__main__":
    main()
