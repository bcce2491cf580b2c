"""The compiled CPU kernels, built with the system C compiler on first use, cached per user
and machine, called through ctypes (which releases the GIL).

directions.c, the direction fill: ~1 ns per value a thread: a tenth of the oracle's product
h z^T at N = 512 tokens, but most of generation's (one token per direction), so large fills
are split over torch's intra-op threads (every value depends only on its key and position,
so the bits never change). low_rank.c: the exact change's sums for low-rank directions
(low_rank_sums), split by tokens, never by the sum over output rows. amx.c: the low-rank
update's GEMM on AMX tiles where the CPU has them (amx_add_products), split by rows.

Without a C compiler (or if the build fails) `available()` is False and the callers use
the torch path: the same direction bits, and low-rank votes to float32 rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("directions.c", "low_rank.c", "amx.c"))
# no FMA contraction: every float operation is the source's (fused ones are explicit), on
# any instruction set, so the target (-march, tried first; the library is cached per machine
# and target) changes the speed, not the bits
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off")
MARCH_ENV = "COMPO_CPU_MARCH"  # the target the library is built for (default: native)
CACHE_ENV = "COMPO_CACHE_DIR"  # where the built library is kept (default ~/.cache/compo)
BUILD_TIMEOUT_S = 120
SPLIT_VALUES = 1 << 16  # fills smaller than this run on the calling thread
AMX_REGION = 32  # amx.c's outputs a side of a region (its column strips are this wide)
AMX_KSTEP = 32  # amx.c's k per tile product: K must be a multiple of it


def cache_dir() -> Path:
    """A directory only this user can write, for the built library."""
    base = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME")
    path = Path(base) / "compo" if base else Path.home() / ".cache" / "compo"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        path = Path(tempfile.gettempdir()) / f"compo-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        if path.stat().st_uid != os.getuid():
            raise PermissionError(f"{path} belongs to another user") from None
        return path


def target_flag() -> str:
    """-march=native, or the target COMPO_CPU_MARCH names (e.g. haswell: what an AVX2 laptop
    runs, on a machine that has more)."""
    return f"-march={os.environ.get(MARCH_ENV) or 'native'}"


def machine() -> str:
    """What -march=native compiles for: the architecture and, on Linux, the CPU's flags."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {platform.processor()} {flags}"


def build(compiler: str, target: Path) -> None:
    """Compile SOURCES into `target` (written under a temporary name, then renamed), for
    target_flag()'s instruction set where the compiler knows it (else its default)."""
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.part")
    os.close(handle)
    command = [compiler, *FLAGS, "-o", partial, *map(str, SOURCES), "-lm"]
    try:
        try:
            subprocess.run([*command, target_flag()], check=True, capture_output=True,
                           text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.CalledProcessError:
            subprocess.run(command, check=True, capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_S)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; None when it cannot be built here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: directions are generated with torch ops (same "
                    "values, slower); install gcc or set CC for the compiled kernel")
        return None
    tag = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES)
                         + " ".join([compiler, *FLAGS, target_flag(), machine()]).encode())
    try:
        target = cache_dir() / f"directions-{tag.hexdigest()[:16]}.so"
        if not target.exists():
            build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or error
        log.warning("could not build the CPU direction kernel (%s): directions are "
                    "generated with torch ops (same values, slower)", detail)
        return None
    lib.compo_fill_directions.restype = None
    lib.compo_fill_directions.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p]
    lib.compo_low_rank_changes.restype = ctypes.c_int
    lib.compo_low_rank_changes.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 6 + [
        ctypes.c_void_p] * 2
    lib.compo_amx_ready.restype = ctypes.c_int
    lib.compo_amx_add_products.restype = ctypes.c_int
    lib.compo_amx_add_products.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                           ctypes.c_void_p] + [ctypes.c_int64] * 4 + [
        ctypes.c_void_p]
    return lib


def available() -> bool:
    """Whether the compiled kernel can be used in this process."""
    return library() is not None


@cache
def pool(threads: int) -> ThreadPoolExecutor:
    """Worker threads for split fills (kept for the process)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="compo-fill")


def fill_part(out: torch.Tensor, keys, start: int, table: torch.Tensor) -> None:
    """One contiguous part: out [P, count] <- elements [start, start + count)."""
    key_array = (ctypes.c_uint64 * len(keys))(*keys)
    library().compo_fill_directions(table.data_ptr(), key_array, len(keys), start,
                                    out.shape[1], out.data_ptr())


def fill(out: torch.Tensor, keys, start: int, table: torch.Tensor) -> torch.Tensor:
    """out [P, count] float32 (CPU, contiguous) <- elements [start, start + count) of the
    directions with these keys, looked up in `table` (float32 [65536]); split by keys, or
    by ranges of one key, over torch.get_num_threads() threads."""
    if out.dtype != torch.float32 or not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError("fill writes a contiguous float32 CPU tensor")
    threads = min(torch.get_num_threads(), max(1, out.numel() // SPLIT_VALUES))
    if threads == 1:
        fill_part(out, keys, start, table)
    elif len(keys) >= threads:
        bounds = [len(keys) * i // threads for i in range(threads + 1)]
        list(pool(threads).map(lambda a, b: fill_part(out[a:b], keys[a:b], start, table),
                               bounds[:-1], bounds[1:]))
    else:
        for row, key in zip(out, keys, strict=True):  # few keys: ranges of each
            count = row.numel()
            bounds = [count * i // threads for i in range(threads + 1)]
            list(pool(threads).map(lambda a, b, row=row, key=key: fill_part(
                row[a:b][None], [key], start + a, table), bounds[:-1], bounds[1:]))
    return out


def low_rank_sums(u: torch.Tensor, a: torch.Tensor, probs: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per direction and token [P, N]: sum_v probs[n, v] expm1(e) (float64) and e at the
    target (float32), e = u[p, n] . a[p, :, v] never stored (low_rank.c); u [P, N, r],
    a [P, r, V], probs [N, V] float32 CPU. Tokens are split over torch's threads."""
    u, a, probs = (t.float().contiguous() for t in (u, a, probs))
    targets = targets.to(torch.int64).contiguous()
    count, tokens, rank = u.shape
    spread = torch.empty(count, tokens, dtype=torch.float64)
    at_target = torch.empty(count, tokens, dtype=torch.float32)
    args = [t.data_ptr() for t in (u, a, probs, targets)] + [count, tokens, rank, a.shape[2]]
    outs = [spread.data_ptr(), at_target.data_ptr()]
    threads = max(1, min(torch.get_num_threads(), tokens))
    bounds = [tokens * i // threads for i in range(threads + 1)]
    codes = pool(threads).map(lambda lo, hi: library().compo_low_rank_changes(*args, lo, hi, *outs),
                              bounds[:-1], bounds[1:])
    if any(code != 0 for code in codes):
        raise MemoryError(f"low_rank.c could not allocate its {rank} x 256 block buffer")
    return at_target, spread


@cache
def amx_ready() -> bool:
    """Whether the update's GEMM runs on AMX tiles here (amx.c built for this CPU and the
    kernel granted the tile state)."""
    return available() and library().compo_amx_ready() == 1


def amx_strips(b: torch.Tensor) -> torch.Tensor:
    """b [K, n] bf16 (K even) in amx.c's layout: strips of 32 columns, each [K / 2, 32, 2]
    (pairs of k side by side), columns padded with zeros to a multiple of 32."""
    k, n = b.shape
    padded = torch.nn.functional.pad(b, (0, -n % AMX_REGION))
    return padded.view(k // 2, 2, -1, AMX_REGION).permute(2, 0, 3, 1).contiguous()


def amx_add_products(a: torch.Tensor, strips: torch.Tensor, row0: int, out: torch.Tensor
                     ) -> None:
    """out [R, n] float32 += a[:, row0 : row0 + R]^T b on AMX tiles, a [K, V] bf16
    (K a multiple of 32), strips = amx_strips(b); rows split over torch's threads (every
    row's bits are the same for any split)."""
    rows, n = out.shape
    threads = max(1, min(torch.get_num_threads(), rows // AMX_REGION))
    bounds = [rows * i // threads for i in range(threads + 1)]

    def part(lo: int, hi: int) -> int:
        return library().compo_amx_add_products(
            a.data_ptr(), a.stride(0), a.shape[0], strips.data_ptr(),
            strips.shape[0] * AMX_REGION, row0 + lo, hi - lo, n, out[lo:hi].data_ptr())

    codes = set(pool(threads).map(part, bounds[:-1], bounds[1:]))
    if -1 in codes:
        raise MemoryError("amx.c could not allocate its buffer of packed rows")
    if codes != {0}:
        raise ValueError(f"amx.c refused K = {a.shape[0]} (a multiple of {AMX_KSTEP}) or "
                         f"strips {tuple(strips.shape)} for n = {n}")
