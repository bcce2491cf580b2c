"""Generated tokens/s, comparisons/s and peak memory of one worker: perturbed-head generation
(the prompt encoded once, its KV cache copied to every row; directions never stored: each
token's products h_p z_p^T come from the fused row kernel on CUDA, from blocks of rows on
CPU) against the bare operation that bounds it, Hugging Face `generate` of the same number
of rows with the plain output layer (each row encodes the prompt itself), and that plus the
one cost a perturbed head adds (the products of every row and token, directions made as
generation makes them: `bound`). Same random model, same prompt, greedy, no EOS (every row
generates --new-tokens), A/B interleaved. Both direction families (compo.directions): dense
Gaussian and low rank (--rank r: each row keeps its factors, r (V + d) extra per token;
keys *_low_rank). Peak memory above the model, of one untimed run
each (compo/service_oracle/memory.py peak_bytes: CUDA's allocator statistics, on CPU every
tensor allocation torch's profiler records). Prints one JSON line.

  python bench/generation_throughput.py --rows 16        # CPU, small Mistral-like shape
  python bench/generation_throughput.py --device cuda --shape scaled --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from compo.config import OracleConfig
from compo.directions import DirectionsConfig, low_rank_factors
from compo.model.head import head_of, output_layer
from compo.model.loading import DTYPES, model_device, prepare_model
from compo.perturbation import direction_key
from compo.service_oracle.generation import (
    add_low_rank_products_,
    add_products_,
    encode_prefix,
    generate,
    perturbation_head,
)
from compo.service_oracle.memory import fitting_batch, free_bytes, peak_bytes, row_bytes

SHAPES = {  # Mistral-7B's proportions at smaller width and depth
    "small": dict(hidden_size=256, intermediate_size=896, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=1),
    "scaled": dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=2),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8),
}
VOCAB = 32000
RADIUS = 0.05


def build(shape: str, device: str, dtype: str):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=VOCAB, max_position_embeddings=4096, **SHAPES[shape])
    model = MistralForCausalLM(config).to(device, DTYPES[dtype]).eval()
    return prepare_model(model)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(model, prompt, rows: int, new_tokens: int,
         directions: DirectionsConfig | None = None) -> float:
    """Seconds to generate `rows` perturbed responses (dense: directions made per token)."""
    device = str(model_device(model))
    sync(device)
    started = time.perf_counter()
    weight = output_layer(model).weight.detach().float()
    keys = [direction_key(0, 0, index) for index in range(rows)]
    head = perturbation_head(weight, keys, RADIUS, head_of(model), directions=directions)
    greedy = OracleConfig(max_new_tokens=new_tokens, temperature=0)  # as the bare generate
    generate(model, encode_prefix(model, prompt), head, greedy, [torch.Generator()] * rows, None)
    sync(device)
    return time.perf_counter() - started


def products(model, rows: int, new_tokens: int, rank: int | None = None) -> float:
    """Seconds of the one thing a perturbed head adds and cannot avoid: per generated token,
    h_p z_p^T for every row, directions made as generation makes them (add_products_; with
    `rank`, the rows' factors made once and used per token)."""
    device = str(model_device(model))
    weight = output_layer(model).weight.detach().float()
    keys = [direction_key(0, 0, index) for index in range(rows)]
    hidden = torch.randn(rows, weight.shape[1], device=device,
                         dtype=next(model.parameters()).dtype)  # as the body hands it over
    logits = torch.zeros(rows, weight.shape[0], device=device)
    sync(device)
    started = time.perf_counter()
    if rank is not None:
        factors = low_rank_factors(keys, tuple(weight.shape), rank, device)
    for _ in range(new_tokens):
        if rank is None:
            add_products_(logits, keys, hidden, RADIUS)
        else:
            add_low_rank_products_(logits, factors, hidden, RADIUS)
    sync(device)
    return time.perf_counter() - started


def bare(model, prompt, rows: int, new_tokens: int, device: str) -> float:
    """Seconds of HF generate of `rows` plain responses (the prompt encoded per row)."""
    ids = torch.tensor([prompt] * rows, device=device)
    sync(device)
    started = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                   pad_token_id=0)
    sync(device)
    return time.perf_counter() - started


def peaks(model, prompt, rows: int, new_tokens: int, low: DirectionsConfig) -> dict[str, int]:
    """Peak bytes allocated above the loaded model by one run of each (untimed)."""
    device = model_device(model)
    return {"ours": peak_bytes(lambda: ours(model, prompt, rows, new_tokens), device)[1],
            "ours_low_rank": peak_bytes(lambda: ours(model, prompt, rows, new_tokens, low),
                                        device)[1],
            "bare": peak_bytes(lambda: bare(model, prompt, rows, new_tokens, str(device)),
                               device)[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--rows", type=int, help="perturbations per batch (default: from "
                        "free memory, as oracle.generation_batch_size: null does)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=4, help="rank of the low-rank directions")
    args = parser.parse_args()
    model = build(args.shape, args.device, args.dtype)
    shape = tuple(output_layer(model).weight.shape)
    per_row = row_bytes(shape, model.config, DTYPES[args.dtype],
                        args.prompt_tokens + args.new_tokens)
    rows = args.rows or fitting_batch(free_bytes(torch.device(args.device)), per_row, 1600)
    prompt = torch.randint(4, VOCAB, (args.prompt_tokens,), generator=torch.Generator()
                           .manual_seed(1)).tolist()
    low = DirectionsConfig(kind="low_rank", rank=args.rank)
    ours(model, prompt, rows, 2)  # warm-up
    ours(model, prompt, rows, 2, low)
    bare(model, prompt, rows, 2, args.device)
    memory = peaks(model, prompt, rows, args.new_tokens, low)
    times = {"ours": [], "bare": [], "products": [], "ours_low_rank": [],
             "products_low_rank": []}
    for _ in range(args.repeats):  # interleaved: all see the same machine state
        times["ours"].append(ours(model, prompt, rows, args.new_tokens))
        times["ours_low_rank"].append(ours(model, prompt, rows, args.new_tokens, low))
        times["bare"].append(bare(model, prompt, rows, args.new_tokens, args.device))
        times["products"].append(products(model, rows, args.new_tokens))
        times["products_low_rank"].append(products(model, rows, args.new_tokens, args.rank))
    print(json.dumps(report(args, rows, shape, times, memory)))


def report(args, rows: int, shape: tuple[int, int], times: dict, memory: dict) -> dict:
    """The JSON line: rates of the fastest repeat of each, dense and low rank."""
    best = {name: min(values) for name, values in times.items()}
    tokens = rows * args.new_tokens
    return {
        "shape": args.shape, "device": args.device, "dtype": args.dtype, "rows": rows,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(), "rank": args.rank,
        "ours_tokens_per_s": round(tokens / best["ours"], 1),
        "ours_comparisons_per_s": round(rows / best["ours"], 2),
        "bare_hf_generate_tokens_per_s": round(tokens / best["bare"], 1),
        "ours_over_bare": round(best["bare"] / best["ours"], 3),
        "bound_tokens_per_s": round(tokens / (best["bare"] + best["products"]), 1),
        "ours_over_bound": round((best["bare"] + best["products"]) / best["ours"], 3),
        "products_share_of_ours": round(best["products"] / best["ours"], 3),
        "ours_low_rank_tokens_per_s": round(tokens / best["ours_low_rank"], 1),
        "ours_low_rank_over_bare": round(best["bare"] / best["ours_low_rank"], 3),
        "low_rank_products_share": round(best["products_low_rank"] / best["ours_low_rank"], 3),
        "low_rank_over_dense_products": round(best["products"] / best["products_low_rank"], 1),
        "peak_bytes": memory,
        "peak_bytes_per_row": {name: round(value / rows) for name, value in memory.items()},
        "direction_bytes_per_row_if_stored": 4 * shape[0] * shape[1],
        "low_rank_factor_bytes_per_row": 4 * args.rank * sum(shape),
        "seconds": {name: [round(t, 3) for t in values] for name, values in times.items()}}

if __name__ == "__main__":
    main()
