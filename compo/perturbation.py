"""Counter-based Gaussian directions: z = Z(run seed, iteration, index), exact on every device.

Definition. Element e (row-major position in the [V, d] output layer) of the direction
with key k = direction_key(seed, iteration, index) is
  bits = mix64(k + (e // 4 + 1) * GOLDEN)          (SplitMix64 output number e // 4 + 1)
  u    = (bits >> (16 * (e % 4))) & 0xFFFF         (four 16-bit lanes per 64-bit hash)
  z    = TABLE[u]
TABLE[u] is the N(0, 1) quantile at (u + 0.5) / 65536 rounded to bfloat16, antisymmetric
(TABLE[65535 - u] = -TABLE[u]). Only integer operations and one table look-up: the pure
Python reference, torch on CPU or CUDA, the compiled CPU kernel (compo/kernels/cpu.py)
and the Triton kernel (compo/kernels/fused.py) give the same bits, so a run may move
between device kinds and any process regenerates the direction a vote was cast for.
(Seeded torch.randn is not like this: its values depend on the launch grid and the device.)

Distribution: the 65,536-point quantile discretisation of N(0, 1) in bfloat16 (2,680
distinct values): mean exactly 0, variance 0.999986, kurtosis 2.9992 (N(0, 1): 1 and 3),
|z| <= 4.3125; each end point carries 1/65536 of the mass, the mass N(0, 1) has in its
last quantile bin (N(0, 1) puts 8e-6 beyond 4.3125 on each side). Values
are bf16-exact, so float32 and bfloat16 directions are the same numbers and bf16 x bf16
products are exact. tests/compo/test_perturbation.py checks moments, tails and the
uniformity of normalised directions on the sphere against N(0, 1).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import struct
from collections.abc import Iterator, Sequence
from functools import cache
from statistics import NormalDist

import torch

from compo.kernels import cpu
from compo.kernels.definition import (  # the integers of the definition, shared with kernels
    GOLDEN,
    LANE_BITS,
    LANE_MASK,
    LANES,
    MASK64,
    MIX1,
    MIX2,
    signed,
)

log = logging.getLogger(__name__)

TABLE_SIZE = 1 << LANE_BITS
BF16_SIGNIFICANT_BITS = 8  # bfloat16 keeps 8 significant bits (7 stored + 1 implicit)
# sha256 of the table's float32 little-endian bytes: the table is built from the quantile
# function with the platform's math library; a platform that rounds differently is refused.
TABLE_SHA256 = "ff53200b304b317173412ab5d40de8f0b5223003e4cc32fa194e91c001084bf9"
# Names the definition; run checkpoints record it, so a run is never resumed with other
# directions than it started with.
GENERATOR = f"splitmix64-lanes16-bf16-normal-table-{TABLE_SHA256[:12]}"
# Speed only, never values: 64-bit words hashed per piece by the torch path (temporaries
# stay in cache), and direction values per block when the config leaves it open.
PIECE_WORDS = 1 << 16
BLOCK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits).bitwise_and_((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors, in place; multiplication wraps mod 2**64."""
    x ^= _shift_right(x, 30)
    x *= signed(MIX1)
    x ^= _shift_right(x, 27)
    x *= signed(MIX2)
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


def round_to_bf16(x: float) -> float:
    """x rounded to bfloat16's 8 significant bits, ties to even, in exact float arithmetic."""
    if x == 0:
        return 0.0
    mantissa, exponent = math.frexp(x)  # x = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    scaled = round(mantissa * 2**BF16_SIGNIFICANT_BITS)  # exact product; round: half to even
    return math.ldexp(scaled, exponent - BF16_SIGNIFICANT_BITS)


@cache
def quantile_table() -> tuple[float, ...]:
    """TABLE: bf16 N(0, 1) quantiles at (u + 0.5) / TABLE_SIZE, antisymmetric by construction."""
    half = TABLE_SIZE // 2
    normal = NormalDist()
    upper = [round_to_bf16(normal.inv_cdf((half + i + 0.5) / TABLE_SIZE)) for i in range(half)]
    table = tuple([-v for v in reversed(upper)] + upper)
    digest = hashlib.sha256(struct.pack(f"<{TABLE_SIZE}f", *table)).hexdigest()
    if digest != TABLE_SHA256:
        raise RuntimeError(f"the direction table built on this platform differs from the "
                           f"reference (sha256 {digest}); its math library rounds the normal "
                           f"quantiles differently, so directions would not match other "
                           f"machines. Report the platform; do not run on it")
    return table


@cache
def table_tensor(device: torch.device) -> torch.Tensor:
    """TABLE as float32 [TABLE_SIZE] on `device` (one copy per device)."""
    return torch.tensor(quantile_table(), dtype=torch.float32, device=device)


def reference_values(key: int, start: int, count: int) -> list[float]:
    """Elements [start, start + count) of direction `key`, straight from the definition
    in pure Python: what every other implementation is tested against."""
    table = quantile_table()
    out = []
    for element in range(start, start + count):
        bits = mix64_int(key + (element // LANES + 1) * GOLDEN)
        out.append(table[(bits >> (LANE_BITS * (element % LANES))) & LANE_MASK])
    return out


def fill_torch(out: torch.Tensor, key: int, start: int) -> torch.Tensor:
    """Write elements [start, start + len(out)) of direction `key` into float32 `out`, with
    torch integer ops on out's device, piece by piece (any device: the fallback without
    triton or a C compiler)."""
    table = table_tensor(out.device)
    first_word, end_word = start // LANES, (start + out.numel() + LANES - 1) // LANES
    shifts = torch.arange(0, 64, LANE_BITS, device=out.device)  # lane k: bits 16k..16k+15
    for word in range(first_word, end_word, PIECE_WORDS):
        last = min(end_word, word + PIECE_WORDS)
        bits = torch.arange(word + 1, last + 1, dtype=torch.int64, device=out.device)
        bits *= signed(GOLDEN)  # SplitMix64 state after (word + 1) steps from the key
        bits += signed(key)
        mix64(bits)
        lanes = (bits[:, None] >> shifts).bitwise_and_(LANE_MASK).view(-1)
        values = table.index_select(0, lanes)  # elements word*4 .. last*4
        lo, hi = max(start, word * LANES), min(start + out.numel(), last * LANES)
        out[lo - start : hi - start] = values[lo - word * LANES : hi - word * LANES]
    return out


def generator_for(device_type: str) -> str:
    """Which implementation makes directions on this kind of device (all give the
    definition's bits): "triton" on CUDA (one launch per block, compo/kernels/fused.py),
    "compiled" on CPU (compo/kernels/cpu.py), else "torch" (fill_torch: ~23 small ops per
    PIECE_WORDS words; the fallback without triton or a C compiler)."""
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is not None:
            return "triton"
        _without_triton()
        return "torch"
    return "compiled" if device_type == "cpu" and cpu.available() else "torch"


@cache
def _without_triton() -> None:
    log.info("triton is not installed: CUDA directions come from torch integer ops (same "
             "values, many small launches); pip install 'compo[gpu]'")


def normals(keys: Sequence[int], start: int, count: int, device="cpu",
            dtype: torch.dtype = torch.float32, generator: str | None = None) -> torch.Tensor:
    """Elements [start, start + count) of the directions with these keys: [P, count] in
    `dtype` (values are bf16-exact: float32, bf16 and fp16 hold them without rounding).

    generator: which implementation (default generator_for(device)); the tests run
    "triton" on CPU in Triton's interpreter. Every one gives the definition's bits.
    """
    device = torch.device(device)
    kind = generator or generator_for(device.type)
    if kind == "triton":
        from compo.kernels.fused import triton_fill

        out = torch.empty(len(keys), count, dtype=dtype, device=device)
        return triton_fill(out, keys, start, table_tensor(device))
    out = torch.empty(len(keys), count, dtype=torch.float32, device=device)
    if kind == "compiled":
        return cpu.fill(out, keys, start, table_tensor(device)).to(dtype)
    for row, key in zip(out, keys, strict=True):
        fill_torch(row, key, start)
    return out.to(dtype)


def direction_rows(keys: Sequence[int], row_start: int, row_end: int, cols: int,
                   device="cpu", dtype: torch.dtype = torch.float32,
                   generator: str | None = None) -> torch.Tensor:
    """Rows [row_start, row_end) of directions laid out row-major: [P, rows, cols].

    The one entry point every user of directions goes through (oracle, rebuild, generation).
    Values are bf16-exact, so the cast to `dtype` never changes them.
    """
    flat = normals(keys, row_start * cols, (row_end - row_start) * cols, device, dtype,
                   generator)
    return flat.view(len(keys), row_end - row_start, cols)


def block_budget(block_elements: int | None, device="cpu") -> int:
    """Direction values per block: the configured number, or the device kind's default."""
    if block_elements is not None:
        return block_elements
    return BLOCK_ELEMENTS.get(torch.device(device).type, BLOCK_ELEMENTS["cpu"])


def plan_blocks(num: int, shape: tuple[int, int], block_elements: int | None,
                device="cpu") -> tuple[int, int]:
    """(directions per group, rows per chunk) so a block holds ~block_elements values."""
    block_elements = block_budget(block_elements, device)
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
