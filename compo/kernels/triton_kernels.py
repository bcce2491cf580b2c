"""Triton kernels: the direction generator in registers, and the fused oracle kernel.

Imports triton at module level: reach it only through compo/kernels/fused.py. The
generator is compo/perturbation.py's definition, element for element (64-bit words of 4
table indices; rows start on whole words because d % 4 == 0): `directions_kernel` writes
it out (the tests compare it bit for bit with the reference), `token_changes_kernel` never
does — each program makes the direction tile it needs in registers, multiplies it with h,
and reduces the product tile to the log-prob change terms straight away.
Set TRITON_INTERPRET=1 before importing this module to run the kernels on CPU (numpy).
"""

from __future__ import annotations

import triton
import triton.language as tl

from compo import perturbation

GOLDEN = tl.constexpr(perturbation.GOLDEN)
MIX1 = tl.constexpr(perturbation.MIX1)
MIX2 = tl.constexpr(perturbation.MIX2)
LANE_BITS = tl.constexpr(perturbation.LANE_BITS)
LANE_MASK = tl.constexpr(perturbation.LANE_MASK)
EXPM1_SERIES_BELOW = tl.constexpr(0.5)  # |x| below this: Taylor series (error < 1e-9 |x|)
TANH_CLAMP = tl.constexpr(15.0)  # tanh(15) is 1 in float32; keeps expm1(2y) finite


@triton.jit
def _mix64(x):
    """SplitMix64 finaliser on uint64 (wraps mod 2**64; >> on unsigned is logical)."""
    x ^= x >> 30
    x *= MIX1
    x ^= x >> 27
    x *= MIX2
    return x ^ (x >> 31)


@triton.jit
def _lane_tiles(table_ptr, key, rows, words, words_per_row, mask):
    """The direction's values at rows [R] x words [W]: four [R, W] tiles, tile l holding
    element 4 * word + l of each row (0 where mask is False)."""
    word = rows[:, None].to(tl.uint64) * words_per_row + words[None, :].to(tl.uint64)
    bits = _mix64(key + (word + 1) * GOLDEN)
    z0 = tl.load(table_ptr + (bits & LANE_MASK).to(tl.int32), mask=mask, other=0.0)
    z1 = tl.load(table_ptr + ((bits >> LANE_BITS) & LANE_MASK).to(tl.int32), mask=mask,
                 other=0.0)
    z2 = tl.load(table_ptr + ((bits >> (2 * LANE_BITS)) & LANE_MASK).to(tl.int32), mask=mask,
                 other=0.0)
    z3 = tl.load(table_ptr + (bits >> (3 * LANE_BITS)).to(tl.int32), mask=mask, other=0.0)
    return z0, z1, z2, z3


@triton.jit
def directions_kernel(keys_ptr, table_ptr, out_ptr, row_start, rows, words_per_row,
                      BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """out [P, rows, 4 * words_per_row] <- rows row_start.. of each direction."""
    pid_r, pid_w, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    key = tl.load(keys_ptr + pid_p).to(tl.uint64, bitcast=True)
    local = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    words = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (local[:, None] < rows) & (words[None, :] < words_per_row)
    z0, z1, z2, z3 = _lane_tiles(table_ptr, key, row_start + local, words, words_per_row, mask)
    cols = 4 * words_per_row
    at = out_ptr + pid_p.to(tl.int64) * rows * cols + local[:, None].to(tl.int64) * cols \
        + 4 * words[None, :]
    tl.store(at, z0, mask=mask)
    tl.store(at + 1, z1, mask=mask)
    tl.store(at + 2, z2, mask=mask)
    tl.store(at + 3, z3, mask=mask)


@triton.jit
def _expm1(x):
    """exp(x) - 1 without cancellation: Taylor series to x**9 / 9! near 0, else exp - 1."""
    t = 1.0 + x * (1.0 / 9.0)
    t = 1.0 + x * (1.0 / 8.0) * t
    t = 1.0 + x * (1.0 / 7.0) * t
    t = 1.0 + x * (1.0 / 6.0) * t
    t = 1.0 + x * (1.0 / 5.0) * t
    t = 1.0 + x * (1.0 / 4.0) * t
    t = 1.0 + x * (1.0 / 3.0) * t
    t = 1.0 + x * 0.5 * t
    return tl.where(tl.abs(x) < EXPM1_SERIES_BELOW, x * t, tl.exp(x) - 1.0)


@triton.jit
def _tanh(y):
    """tanh from expm1 (accurate near 0, where the soft-cap's small steps are)."""
    e = _expm1(2.0 * tl.minimum(tl.maximum(y, -TANH_CLAMP), TANH_CLAMP))
    return e / (e + 2.0)


@triton.jit
def _products(hidden_ptr, table_ptr, key, tokens, rows, n_tokens, n_rows, words_per_row,
              stride_h, DOT_BF16: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
              BLOCK_W: tl.constexpr):
    """h z^T [BLOCK_N, BLOCK_V] float32 for these tokens and output rows; the direction
    tile of each step is made in registers, lane by lane (h columns 4 * word + lane)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    token_ok = tokens[:, None] < n_tokens
    for word0 in range(0, words_per_row, BLOCK_W):
        words = word0 + tl.arange(0, BLOCK_W)
        word_ok = words[None, :] < words_per_row
        z0, z1, z2, z3 = _lane_tiles(table_ptr, key, rows, words, words_per_row,
                                     (rows[:, None] < n_rows) & word_ok)
        h_at = hidden_ptr + tokens[:, None].to(tl.int64) * stride_h + 4 * words[None, :]
        h_ok = token_ok & word_ok
        acc = _lane_dot(acc, h_at, h_ok, z0, DOT_BF16)
        acc = _lane_dot(acc, h_at + 1, h_ok, z1, DOT_BF16)
        acc = _lane_dot(acc, h_at + 2, h_ok, z2, DOT_BF16)
        acc = _lane_dot(acc, h_at + 3, h_ok, z3, DOT_BF16)
    return acc


@triton.jit
def _lane_dot(acc, h_at, h_ok, z, DOT_BF16: tl.constexpr):
    """acc += h[:, lane columns] @ z_lane^T: exact bf16 products on tensor cores, or
    float32 (interpreter, float32 models)."""
    h = tl.load(h_at, mask=h_ok, other=0.0)
    if DOT_BF16:
        acc = tl.dot(h.to(tl.bfloat16), tl.trans(z.to(tl.bfloat16)), acc, out_dtype=tl.float32)
    else:
        acc = tl.dot(h.to(tl.float32), tl.trans(z), acc, input_precision="ieee",
                     out_dtype=tl.float32)
    return acc


@triton.jit
def token_changes_kernel(hidden_ptr, keys_ptr, table_ptr, probs_ptr, base_ptr, targets_ptr,
                         spread_ptr, target_ptr, n_tokens, n_rows, words_per_row, stride_h,
                         factor, cap, HAS_CAP: tl.constexpr, DOT_BF16: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_W: tl.constexpr):
    """One tile of tokens x output rows of one direction: products, logit change
    (factor * h z^T, soft-capped when HAS_CAP), and its two reductions:
    spread[p, n, tile] = sum_v p_v expm1(change_v), target[p, n] = change at the target."""
    pid_v, pid_n, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    key = tl.load(keys_ptr + pid_p).to(tl.uint64, bitcast=True)
    tokens = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    acc = _products(hidden_ptr, table_ptr, key, tokens, rows, n_tokens, n_rows, words_per_row,
                    stride_h, DOT_BF16, BLOCK_N, BLOCK_V, BLOCK_W)
    ok = (tokens[:, None] < n_tokens) & (rows[None, :] < n_rows)
    at = tokens[:, None].to(tl.int64) * n_rows + rows[None, :]
    if HAS_CAP:  # base holds capped logits cap * tanh(x): the cancellation-free identity
        t_base = tl.load(base_ptr + at, mask=ok, other=0.0) / cap
        t_step = _tanh(acc * (factor / cap))
        change = cap * t_step * (1.0 - t_base * t_base) / (1.0 + t_base * t_step)
    else:
        change = acc * factor
    probs = tl.load(probs_ptr + at, mask=ok, other=0.0)
    spread = tl.sum(probs * _expm1(change), axis=1)
    tiles = tl.num_programs(0)
    token_row = pid_p.to(tl.int64) * n_tokens + tokens
    tl.store(spread_ptr + token_row * tiles + pid_v, spread, mask=tokens < n_tokens)
    target = tl.load(targets_ptr + tokens, mask=tokens < n_tokens, other=-1)
    hit = rows[None, :] == target[:, None]
    picked = tl.sum(tl.where(hit & ok, change, 0.0), axis=1)
    inside = (target >= pid_v * BLOCK_V) & (target < pid_v * BLOCK_V + BLOCK_V)
    tl.store(target_ptr + token_row, picked, mask=inside & (tokens < n_tokens))
