"""Triton kernels: the direction generator, and the products that make directions in registers.

Imports triton at module level: reach it only through compo/kernels/fused.py. The
generator is compo/perturbation.py's definition, element for element (its integers come
from compo/kernels/definition.py): one 64-bit hash per
word of 4 elements, lane l of the word is element 4 * word + l. `fill_kernel` writes
directions out (every CUDA user of directions: the eager oracle, the rebuild, moved MLPs;
the tests compare it bit for bit with the reference). The product kernels never write them:
each program makes the direction tile it needs in registers, multiplies it with h and
reduces straight away (`token_changes_kernel`: the likelihood oracle, many tokens per
direction; `row_products_kernel`: generation, one hidden state per direction).
Set TRITON_INTERPRET=1 before importing this module to run the kernels on CPU (numpy).
"""

from __future__ import annotations

import triton
import triton.language as tl

from compo.kernels import definition

GOLDEN = tl.constexpr(definition.GOLDEN)
MIX1 = tl.constexpr(definition.MIX1)
MIX2 = tl.constexpr(definition.MIX2)
LANES = tl.constexpr(definition.LANES)
LANE_BITS = tl.constexpr(definition.LANE_BITS)
LANE_MASK = tl.constexpr(definition.LANE_MASK)
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
def _lanes(table_ptr, bits, mask):
    """Table values of the four lanes of each hash: bits [..., 1] -> [..., 4] float32
    (0 where mask is False)."""
    shifts = (tl.arange(0, LANES) * LANE_BITS).to(tl.uint64)
    index = ((bits >> shifts) & LANE_MASK).to(tl.int32)
    return tl.load(table_ptr + index, mask=mask, other=0.0)


@triton.jit
def _direction_tile(table_ptr, key, rows, words, words_per_row, mask):
    """The direction at rows [R] x columns 4 * words[0] .. 4 * words[-1] + 3: [R, 4W]
    float32 (0 where mask [R, W] is False)."""
    word = rows[:, None].to(tl.uint64) * words_per_row + words[None, :].to(tl.uint64)
    bits = _mix64(key + (word + 1) * GOLDEN)  # [R, W]
    values = _lanes(table_ptr, bits[:, :, None], mask[:, :, None])  # [R, W, 4]
    return tl.reshape(values, (rows.shape[0], LANES * words.shape[0]))


@triton.jit
def fill_kernel(keys_ptr, table_ptr, out_ptr, start, count, BLOCK_W: tl.constexpr):
    """out [P, count] <- elements [start, start + count) of each direction (any start;
    out's element type: values are bf16-exact, so float32, bf16 and fp16 hold them)."""
    pid, p = tl.program_id(0), tl.program_id(1)
    key = tl.load(keys_ptr + p).to(tl.uint64, bitcast=True)
    words = start // LANES + pid.to(tl.int64) * BLOCK_W + tl.arange(0, BLOCK_W)  # [W]
    bits = _mix64(key + (words.to(tl.uint64) + 1) * GOLDEN)
    element = LANES * words[:, None] + tl.arange(0, LANES)[None, :]  # [W, 4]
    ok = (element >= start) & (element < start + count)
    values = _lanes(table_ptr, bits[:, None], ok)
    at = out_ptr + p.to(tl.int64) * count + (element - start)
    tl.store(at, values.to(out_ptr.dtype.element_ty), mask=ok)


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
def _dot(h, z, acc, DOT: tl.constexpr):
    """acc [N, R] += h [N, K] @ z [R, K]^T. DOT "bf16" / "fp16": tensor cores, exact
    products (z is bf16-exact, so also fp16-exact) added in float32; "ieee": float32."""
    if DOT == "bf16":
        acc = tl.dot(h.to(tl.bfloat16), tl.trans(z.to(tl.bfloat16)), acc, out_dtype=tl.float32)
    elif DOT == "fp16":
        acc = tl.dot(h.to(tl.float16), tl.trans(z.to(tl.float16)), acc, out_dtype=tl.float32)
    else:
        acc = tl.dot(h.to(tl.float32), tl.trans(z), acc, input_precision="ieee",
                     out_dtype=tl.float32)
    return acc


@triton.jit
def _products(hidden_ptr, table_ptr, key, tokens, rows, n_tokens, n_rows, words_per_row,
              stride_h, DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
              BLOCK_W: tl.constexpr):
    """h z^T [BLOCK_N, BLOCK_V] float32 for these tokens and output rows; the direction
    tile of each step (BLOCK_W words: 4 * BLOCK_W columns) is made in registers."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    token_ok = tokens[:, None] < n_tokens
    row_ok = rows[:, None] < n_rows
    for word0 in range(0, words_per_row, BLOCK_W):
        words = word0 + tl.arange(0, BLOCK_W)
        z = _direction_tile(table_ptr, key, rows, words, words_per_row,
                            row_ok & (words[None, :] < words_per_row))
        cols = LANES * word0 + tl.arange(0, LANES * BLOCK_W)
        h = tl.load(hidden_ptr + tokens[:, None].to(tl.int64) * stride_h + cols[None, :],
                    mask=token_ok & (cols[None, :] < LANES * words_per_row), other=0.0)
        acc = _dot(h, z, acc, DOT)
    return acc


@triton.jit
def token_changes_kernel(hidden_ptr, keys_ptr, table_ptr, probs_ptr, base_ptr, targets_ptr,
                         spread_ptr, target_ptr, n_tokens, n_rows, words_per_row, stride_h,
                         factor, cap, HAS_CAP: tl.constexpr, DOT: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_W: tl.constexpr):
    """One tile of tokens x output rows of one direction: products, logit change
    (factor * h z^T, soft-capped when HAS_CAP), and its two reductions:
    spread[p, n, tile] = sum_v p_v expm1(change_v), target[p, n] = change at the target."""
    pid_v, pid_n, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    key = tl.load(keys_ptr + pid_p).to(tl.uint64, bitcast=True)
    tokens = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    acc = _products(hidden_ptr, table_ptr, key, tokens, rows, n_tokens, n_rows, words_per_row,
                    stride_h, DOT, BLOCK_N, BLOCK_V, BLOCK_W)
    ok = (tokens[:, None] < n_tokens) & (rows[None, :] < n_rows)
    at = tokens[:, None].to(tl.int64) * n_rows + rows[None, :]
    if HAS_CAP:  # base holds capped logits cap * tanh(x): the cancellation-free identity
        t_base = tl.load(base_ptr + at, mask=ok, other=0.0) / cap
        t_step = _tanh(acc * (factor / cap))
        change = cap * t_step * (1.0 - t_base * t_base) / (1.0 + t_base * t_step)
    else:
        change = acc * factor
    target = tl.load(targets_ptr + tokens, mask=tokens < n_tokens, other=-1)
    hit = (rows[None, :] == target[:, None]) & ok
    picked = tl.sum(tl.where(hit, change, 0.0), axis=1)
    probs = tl.load(probs_ptr + at, mask=ok, other=0.0)
    spread = tl.sum(probs * _expm1(change), axis=1)
    tiles = tl.num_programs(0)
    token_row = pid_p.to(tl.int64) * n_tokens + tokens
    tl.store(spread_ptr + token_row * tiles + pid_v, spread, mask=tokens < n_tokens)
    inside = (target >= pid_v * BLOCK_V) & (target < pid_v * BLOCK_V + BLOCK_V)
    tl.store(target_ptr + token_row, picked, mask=inside & (tokens < n_tokens))


@triton.jit
def row_products_kernel(hidden_ptr, keys_ptr, table_ptr, out_ptr, n_rows, words_per_row,
                        stride_h, BLOCK_V: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[p, v] = h_p . z_p[v] for BLOCK_V output rows of direction p (generation: one
    hidden state per direction), float32, the direction tile made in registers."""
    pid_v, p = tl.program_id(0), tl.program_id(1)
    key = tl.load(keys_ptr + p).to(tl.uint64, bitcast=True)
    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows[:, None] < n_rows
    acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for word0 in range(0, words_per_row, BLOCK_W):
        words = word0 + tl.arange(0, BLOCK_W)
        z = _direction_tile(table_ptr, key, rows, words, words_per_row,
                            row_ok & (words[None, :] < words_per_row))
        cols = LANES * word0 + tl.arange(0, LANES * BLOCK_W)
        h = tl.load(hidden_ptr + p.to(tl.int64) * stride_h + cols,
                    mask=cols < LANES * words_per_row, other=0.0).to(tl.float32)
        acc += tl.sum(z * h[None, :], axis=1)
    tl.store(out_ptr + p.to(tl.int64) * n_rows + rows, acc, mask=rows < n_rows)
