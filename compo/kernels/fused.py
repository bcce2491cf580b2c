"""The Triton kernels from the host side: when they can run, their tiles, their launches.

Light on purpose: triton is imported only when a kernel is launched (compo/kernels/
triton_kernels.py), so compo imports without it (`pip install 'compo[gpu]'` brings it).
The tile of every variant is fixed here (TILES) and checked by bench/kernel_compile.py,
which compiles each one for sm_80 and sm_90 and reads its registers and spills
(docs/kernels.md has the table).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch

from compo.errors import ConfigError
from compo.kernels.definition import LANES, signed

log = logging.getLogger(__name__)

INTERPRET_ENV = "TRITON_INTERPRET"  # "1": Triton runs kernels on CPU with numpy (tests)
MIN_CAPABILITY = (8, 0)  # tl.dot on bf16 needs Ampere (sm_80) or newer
# tensor-core operand type of the products per hidden-state dtype; float32: IEEE FMA dots
DOTS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "ieee"}
FILL_WORDS = 1024  # 64-bit words (4 values each) per program of the direction generator


@dataclass(frozen=True)
class Blocks:
    """Tile sizes: tokens x output rows per program, 64-bit words (4 columns) per step."""

    tokens: int = 128
    rows: int = 128
    words: int = 16  # 64 columns of h per step; tl.dot needs >= 16 along K
    warps: int = 8
    stages: int | None = None  # software-pipelining depth (None: Triton's default)

    def launch_options(self) -> dict:
        """Keyword arguments of a launch (and of triton.compile) for this tile."""
        options = {"num_warps": self.warps}
        if self.stages is not None:
            options["num_stages"] = self.stages
        return options


# (products, soft-capped) -> the tile `auto` launches: the largest measured that spills no
# registers on sm_80 and sm_90 (bench/kernel_compile.py; docs/kernels.md has the table).
# Tokens per tile stay at 128 where they can: each generated direction value serves them all.
TILES = {
    ("bf16", False): Blocks(tokens=128, rows=128, words=8, warps=8),
    ("bf16", True): Blocks(tokens=128, rows=64, words=8, warps=8),  # the soft-cap epilogue
    ("fp16", False): Blocks(tokens=128, rows=128, words=8, warps=8),
    ("fp16", True): Blocks(tokens=128, rows=64, words=8, warps=8),
    ("ieee", False): Blocks(tokens=64, rows=64, words=4, warps=8),  # float32 FMA dots
    ("ieee", True): Blocks(tokens=64, rows=64, words=4, warps=8),
}
# every tile bench/kernel_compile.py compiles for each variant: TILES picks among them
# (128 x 128 x 16 words was the first default; it spills on sm_80 and sm_90)
CANDIDATE_TILES = (Blocks(tokens=128, rows=128, words=16, warps=8), *dict.fromkeys(TILES.values()))
ROW_TILE = Blocks(tokens=1, rows=64, words=16, warps=4)  # generation: one token per row


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter."""
    return os.environ.get(INTERPRET_ENV) == "1"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def fused_reason(device: torch.device) -> str | None:
    """Why the fused kernels cannot run on `device` (None: they can): CUDA with compute
    capability >= 8.0 and triton installed; on CPU only in Triton's interpreter (tests)."""
    if not triton_installed():
        return "triton is not installed (pip install 'compo[gpu]')"
    if device.type != "cuda":
        return None if interpreting() else f"it runs on CUDA devices, not {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} has compute capability "
                f"{capability[0]}.{capability[1]}; the tensor-core products need "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer")
    return None


def auto_reason(device: torch.device, width: int) -> str | None:
    """Why products: auto does not pick the fused kernel for hidden states of `width` on
    `device` (None: it does). Never Triton's CPU interpreter: a test tool, ~100x slower
    than eager."""
    if device.type != "cuda":
        return f"the model is on {device.type}; the fused kernel runs on CUDA"
    if width % LANES:
        return f"the hidden size {width} is not a multiple of {LANES}"
    return fused_reason(device)


def fused_available(device: torch.device, required: bool = False) -> bool:
    """Whether the fused kernels run here; required=True turns the reason they cannot into
    a ConfigError."""
    reason = fused_reason(device)
    if reason and required:
        raise ConfigError(f"compo.products is 'fused' but the fused kernel cannot run: "
                          f"{reason}; set products: auto or eager")
    return reason is None


@cache
def explain_eager(reason: str) -> None:
    """One info line per reason (and process) that products: auto runs eagerly."""
    log.info("compo.products auto: eager products (directions in blocks, torch matmul), "
             "not the fused kernel: %s", reason)


def dot_kind(dtype: torch.dtype) -> str:
    """The products' operand type for hidden states of `dtype`. The interpreter has no
    bfloat16 (numpy), so there bf16 runs as float32 (the same exact products)."""
    kind = DOTS.get(dtype, "ieee")
    return "ieee" if kind == "bf16" and interpreting() else kind


def tile_for(dtype: torch.dtype, cap: float | None) -> Blocks:
    """The tile `auto` launches for these hidden states (TILES)."""
    return TILES[DOTS.get(dtype, "ieee"), cap is not None]


def key_tensor(keys: Sequence[int], device: torch.device) -> torch.Tensor:
    """64-bit direction keys as int64 bit patterns (the kernels read them as uint64)."""
    return torch.tensor([signed(k) for k in keys], dtype=torch.int64, device=device)


def triton_fill(out: torch.Tensor, keys: Sequence[int], start: int, table: torch.Tensor
                ) -> torch.Tensor:
    """out [P, count] (float32, bf16 or fp16, contiguous) <- elements [start, start +
    count) of the directions with these keys, looked up in `table` (float32 [65536], on
    out's device): one launch for all of them."""
    from compo.kernels import triton_kernels as tk

    if not out.is_contiguous() or out.dim() != 2 or out.shape[0] != len(keys):
        raise ValueError("triton_fill writes a contiguous [len(keys), count] tensor")
    count = out.shape[1]
    if count and keys:
        words = (start + count - 1) // LANES - start // LANES + 1
        grid = (-(-words // FILL_WORDS), len(keys))
        tk.fill_kernel[grid](key_tensor(keys, out.device), table, out, start, count,
                             BLOCK_W=FILL_WORDS)
    return out


def fused_token_changes(hidden: torch.Tensor, keys: Sequence[int], table: torch.Tensor,
                        probs: torch.Tensor, targets: torch.Tensor, factor: float,
                        base_logits: torch.Tensor | None, cap: float | None,
                        blocks: Blocks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token [P, N] float32: the target's logit change and sum_v p_v expm1(change_v)
    when the logits move by factor * h z^T (then soft-capped at `cap` if given).

    hidden [N, d], table the directions' values (perturbation.table_tensor), probs [N, V]
    (softmax of the base logits), targets [N], base_logits [N, V] capped base logits
    (needed with a cap). z is never written to memory.
    """
    from compo.kernels import triton_kernels as tk

    n_tokens, cols = hidden.shape
    if cols % LANES:
        raise ValueError(f"the fused kernel needs d % {LANES} == 0, got d = {cols}")
    if cap is not None and base_logits is None:
        raise ValueError("a soft-capped head needs the capped base logits")
    blocks = blocks or tile_for(hidden.dtype, cap)
    hidden, probs = hidden.contiguous(), probs.contiguous()
    n_rows, device = probs.shape[1], hidden.device
    tiles = -(-n_rows // blocks.rows)
    spread = torch.empty(len(keys), n_tokens, tiles, dtype=torch.float32, device=device)
    at_target = torch.zeros(len(keys), n_tokens, dtype=torch.float32, device=device)
    base = probs if base_logits is None else base_logits.contiguous()
    grid = (tiles, -(-n_tokens // blocks.tokens), len(keys))
    tk.token_changes_kernel[grid](
        hidden, key_tensor(keys, device), table, probs, base,
        targets.contiguous(), spread, at_target, n_tokens, n_rows, cols // LANES,
        hidden.stride(0), float(factor), float(cap or 1.0), HAS_CAP=cap is not None,
        DOT=dot_kind(hidden.dtype), BLOCK_N=blocks.tokens, BLOCK_V=blocks.rows,
        BLOCK_W=blocks.words, **blocks.launch_options())
    return at_target, spread.sum(-1)  # tiles added in a fixed order: deterministic


def fused_group(n_tokens: int, n_rows: int, budget: int, blocks: Blocks) -> int:
    """Directions per launch of the fused kernel: as many as `budget` float32 values of its
    per-tile partial sums ([P, N, tiles]) hold."""
    return max(1, budget // max(1, n_tokens * -(-n_rows // blocks.rows)))


def fused_row_products(hidden: torch.Tensor, keys: Sequence[int], table: torch.Tensor,
                       n_rows: int, blocks: Blocks = ROW_TILE) -> torch.Tensor:
    """h_p z_p^T per row: hidden [P, d] (one hidden state per direction) -> [P, n_rows]
    float32, each direction's tiles made in registers from `table` (generation on CUDA)."""
    from compo.kernels import triton_kernels as tk

    count, cols = hidden.shape
    if cols % LANES:
        raise ValueError(f"the fused kernel needs d % {LANES} == 0, got d = {cols}")
    if count != len(keys):
        raise ValueError(f"{count} hidden states for {len(keys)} directions")
    hidden = hidden.contiguous()
    out = torch.empty(count, n_rows, dtype=torch.float32, device=hidden.device)
    grid = (-(-n_rows // blocks.rows), count)
    tk.row_products_kernel[grid](hidden, key_tensor(keys, hidden.device), table, out,
                                 n_rows, cols // LANES,
                                 hidden.stride(0), BLOCK_V=blocks.rows, BLOCK_W=blocks.words,
                                 **blocks.launch_options())
    return out
