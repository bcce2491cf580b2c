"""How many perturbations to generate at once: from the device's free memory and what one
row of a generation batch holds (its direction, its KV cache, its logits)."""

from __future__ import annotations

from pathlib import Path

import torch

FREE_SHARE = 0.5  # share of the free memory a generation batch may take
MAX_AUTO_BATCH = 256  # rows beyond this gain nothing on any device we know of
LOGIT_COPIES = 6  # float32 [V] buffers per row per step: logits, softmax, sort, cumsum, ...
MEMINFO = Path("/proc/meminfo")
KIB = 1024


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token adds to one row's cache (every layer)."""
    text = getattr(config, "get_text_config", lambda: config)()
    heads = getattr(text, "num_attention_heads", 1)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * kv_heads * head_dim * itemsize


def row_bytes(shape: tuple[int, int], direction_dtype: torch.dtype, config,
              model_dtype: torch.dtype, tokens: int) -> int:
    """Memory of one row: its [V, d] direction, its cache of `tokens` and its logits."""
    vocab, width = shape
    direction = vocab * width * torch.empty((), dtype=direction_dtype).element_size()
    return direction + tokens * kv_bytes_per_token(config, model_dtype) + LOGIT_COPIES * 4 * vocab


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
