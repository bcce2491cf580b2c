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
UNIFORM_MASK = (1 << UNIFORM_BITS) - 1
UNIFORM_SCALE = 2.0**-UNIFORM_BITS
TWO_PI = 2.0 * math.pi
# Speed only, never values: pairs hashed per piece (CPU: temporaries stay in cache; GPU:
# few kernel launches), and direction values per block when the config leaves it open.
PIECE_PAIRS = {"cpu": 1 << 16, "cuda": 1 << 26}
BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


def _signed(value: int) -> int:
    """A 64-bit pattern as a signed int64 (torch has no usable uint64)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors, in place; multiplication wraps mod 2**64."""
    x ^= _shift_right(x, 30)
    x *= _signed(MIX1)
    x ^= _shift_right(x, 27)
    x *= _signed(MIX2)
    x ^= _shift_right(x, 31)
    return x


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


def _fill_pairs(out: torch.Tensor, key: int, first_pair: int) -> None:
    """Write normals of element pairs first_pair.. into out [n, 2], piece by piece."""
    piece = PIECE_PAIRS.get(out.device.type, PIECE_PAIRS["cpu"])
    for start in range(0, out.shape[0], piece):
        end = min(out.shape[0], start + piece)
        bits = torch.arange(first_pair + start + 1, first_pair + end + 1, dtype=torch.int64,
                            device=out.device)
        bits *= _signed(GOLDEN)  # SplitMix64 state after (pair + 1) steps from the key
        bits += _signed(key)
        mix64(bits)
        # two 24-bit uniforms, exact in float32: u1 in (0, 1] (safe for log), u2 in [0, 1)
        u1 = _shift_right(bits, 40).bitwise_and_(UNIFORM_MASK).add_(1).float()
        u2 = _shift_right(bits, 8).bitwise_and_(UNIFORM_MASK).float()
        radius = u1.mul_(UNIFORM_SCALE).log_().mul_(-2.0).sqrt_()
        angle = u2.mul_(UNIFORM_SCALE).mul_(TWO_PI)
        torch.mul(radius, torch.cos(angle), out=out[start:end, 0])
        torch.mul(radius, angle.sin_(), out=out[start:end, 1])


def normals(keys: Sequence[int], start: int, count: int, device="cpu") -> torch.Tensor:
    """Elements [start, start + count) of the directions with these keys: float32 [P, count].

    Box-Muller: element 2j is r cos(a), element 2j + 1 is r sin(a), from pair j's bits.
    """
    first_pair, end_pair = start // 2, (start + count + 1) // 2
    out = torch.empty(len(keys), end_pair - first_pair, 2, device=device)
    for row, key in enumerate(keys):
        _fill_pairs(out[row], key, first_pair)
    offset = start - 2 * first_pair
    return out.view(len(keys), -1)[:, offset : offset + count]


def direction_rows(keys: Sequence[int], row_start: int, row_end: int, cols: int,
                   device="cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows [row_start, row_end) of directions laid out row-major: [P, rows, cols]."""
    flat = normals(keys, row_start * cols, (row_end - row_start) * cols, device)
    return flat.reshape(len(keys), row_end - row_start, cols).to(dtype)


def plan_blocks(num: int, shape: tuple[int, int], block_elements: int | None,
                device="cpu") -> tuple[int, int]:
    """(directions per group, rows per chunk) so a block holds ~block_elements values."""
    if block_elements is None:
        block_elements = BLOCK_ELEMENTS.get(torch.device(device).type, BLOCK_ELEMENTS["cpu"])
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
