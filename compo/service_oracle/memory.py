"""How many perturbations to generate at once: from the device's free memory and what one
row of a generation batch holds (its KV cache and its logits; never its direction, which is
made per token in blocks of at most V / 2 values: compo/service_oracle/generation.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

FREE_SHARE = 0.5  # share of the free memory a generation batch may take
MAX_AUTO_BATCH = 256  # rows beyond this gain nothing on any device we know of
LOGIT_COPIES = 7  # float32 [V] buffers per row per step: logits, softmax, sort, cumsum, ...
# and the direction block with its products (<= V / 2 values each)
MEMINFO = Path("/proc/meminfo")
KIB = 1024
MEMORY_EVENT = "[memory]"  # the profiler's name of an allocation (+bytes) or free (-bytes)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token adds to one row's cache (every layer)."""
    text = getattr(config, "get_text_config", lambda: config)()
    heads = getattr(text, "num_attention_heads", 1)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * kv_heads * head_dim * itemsize


def row_bytes(shape: tuple[int, int], config, model_dtype: torch.dtype, tokens: int,
              rank: int = 0) -> int:
    """Memory of one row: its cache of `tokens`, its logits and, for low-rank directions of
    rank r, its float32 factors r (V + d) (no V x d term)."""
    vocab, width = shape
    factors = 4 * rank * (vocab + width)
    return tokens * kv_bytes_per_token(config, model_dtype) + LOGIT_COPIES * 4 * vocab + factors


def free_bytes(device: torch.device) -> int:
    """Free memory of the device: CUDA's mem_get_info, else the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * KIB
    raise OSError(f"{MEMINFO} has no MemAvailable line; set oracle.generation_batch_size")


def fitting_batch(free: int, per_row: int, most: int) -> int:
    """The largest power of two of rows that fits FREE_SHARE of `free`, within [1, most]."""
    rows = max(1, min(most, MAX_AUTO_BATCH, int(free * FREE_SHARE) // max(1, per_row)))
    return 1 << (rows.bit_length() - 1)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[object, int]:
    """fn's result and the peak of the memory it allocated on `device` above what was
    allocated when it started (bytes). CUDA: the caching allocator's statistics; CPU: the
    allocation and free events torch's profiler records for every CPU tensor allocation
    (what BLAS libraries allocate privately is not seen)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        result = fn()
    events = sorted((event.start_ns(), event.nbytes())
                    for event in recorded.profiler.kineto_results.events()
                    if event.name() == MEMORY_EVENT and event.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return result, peak
