"""Counter-based Gaussian directions: z = Z(run seed, iteration, index).

Guarantee: element e of direction (seed, iteration, index) is a function of those three
numbers and e only. Nothing depends on chunk sizes, the device, its launch grid, the
thread count or which process asks, so any worker regenerates exactly the direction a
vote was cast for and only (index, vote) pairs need to travel. (Seeded torch.randn does
not give this: its values depend on the kernel's launch grid and differ between CPU and
GPU.)

How: SplitMix64 over the element pair e // 2 gives 64 random bits (integer arithmetic,
bit-exact everywhere), Box-Muller turns them into two normals in float32. The float
step uses log/sqrt/cos/sin, which CPU and CUDA libraries may round differently in the
last bit; on one kind of device the values are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64 increment
MIX1 = 0xBF58476D1CE4E5B9  # SplitMix64 finaliser multipliers
MIX2 = 0x94D049BB133111EB
UNIFORM_BITS = 24  # bits per uniform: exact in float32
TWO_PI = 2.0 * math.pi


def _signed(value: int) -> int:
    """A 64-bit pattern as a signed int64 (torch has no usable uint64)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors; multiplication wraps modulo 2**64."""
    x = x ^ _shift_right(x, 30)
    x = x * _signed(MIX1)
    x = x ^ _shift_right(x, 27)
    x = x * _signed(MIX2)
    return x ^ _shift_right(x, 31)


def mix64_int(x: int) -> int:
    """Pure-Python SplitMix64 finaliser (the reference the tensor version must match)."""
    x &= MASK64
    x ^= x >> 30
    x = (x * MIX1) & MASK64
    x ^= x >> 27
    x = (x * MIX2) & MASK64
    return x ^ (x >> 31)


def direction_key(seed: int, iteration: int, index: int) -> int:
    """64-bit key of one direction; distinct triples give unrelated keys."""
    key = mix64_int(seed + GOLDEN)
    key = mix64_int(key + (iteration + 1) * GOLDEN)
    return mix64_int(key + (index + 1) * GOLDEN)


def _uniform_pair(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 uniforms from 64 bits: u1 in (0, 1] (safe for log), u2 in [0, 1)."""
    scale = 2.0**-UNIFORM_BITS
    field = (1 << UNIFORM_BITS) - 1
    u1 = ((_shift_right(bits, 40) & field) + 1).to(torch.float32) * scale
    u2 = (_shift_right(bits, 8) & field).to(torch.float32) * scale
    return u1, u2


def normals(keys: Sequence[int], start: int, count: int, device="cpu") -> torch.Tensor:
    """Elements [start, start + count) of the directions with these keys: float32 [P, count]."""
    first_pair, end_pair = start // 2, (start + count + 1) // 2
    pair = torch.arange(first_pair, end_pair, dtype=torch.int64, device=device)
    key = torch.tensor([_signed(k) for k in keys], dtype=torch.int64, device=device)
    bits = mix64((pair + 1) * _signed(GOLDEN) + key[:, None])  # SplitMix64 output #pair+1
    u1, u2 = _uniform_pair(bits)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = u2 * TWO_PI
    values = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=2)
    offset = start - 2 * first_pair
    return values.reshape(len(keys), -1)[:, offset : offset + count]


def direction_rows(keys: Sequence[int], row_start: int, row_end: int, cols: int,
                   device="cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows [row_start, row_end) of directions laid out row-major: [P, rows, cols]."""
    flat = normals(keys, row_start * cols, (row_end - row_start) * cols, device)
    return flat.reshape(len(keys), row_end - row_start, cols).to(dtype)


def plan_blocks(num: int, shape: tuple[int, int], block_elements: int) -> tuple[int, int]:
    """(directions per group, rows per chunk) so a block holds ~block_elements values."""
    rows, cols = shape
    chunk_rows = max(1, min(rows, block_elements // cols))
    per_group = max(1, min(num, block_elements // (rows * cols)))
    return per_group, chunk_rows


def direction_chunks(keys: Sequence[int], shape: tuple[int, int], chunk_rows: int,
                     device="cpu", dtype: torch.dtype = torch.float32
                     ) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, rows [P, r, d]) covering [V, d] directions, never all at once."""
    rows, cols = shape
    for row_start in range(0, rows, chunk_rows):
        row_end = min(rows, row_start + chunk_rows)
        yield slice(row_start, row_end), direction_rows(keys, row_start, row_end, cols,
                                                        device, dtype)


def direction(key: int, shape: tuple[int, int], device="cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One whole [V, d] direction (tests and small models; large ones use chunks)."""
    return direction_rows([key], 0, shape[0], shape[1], device, dtype)[0]
