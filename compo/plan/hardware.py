"""Datasheet figures of the GPU kinds `compo plan --gpu` knows, and the plan's fixed
assumptions (each a documented constant, never a measurement of this machine)."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30


@dataclass(frozen=True)
class Gpu:
    """Peak rates of one GPU (NVIDIA datasheets, dense, no sparsity)."""

    name: str
    bf16_tflops: float  # tensor cores, bf16 in, float32 accumulate
    fp32_tflops: float  # plain float32 (the tail in float32, h' - h)
    fp64_tflops: float  # float64 (the tail in float64, compo.perturb.tail_dtype)
    bandwidth_gbs: float  # memory bandwidth, GB/s
    memory_gib: float  # memory of one card (what --gpu-memory-gib defaults to)


GPUS = {
    "H100": Gpu("H100 SXM 80GB", 989.0, 67.0, 67.0, 3350.0, 79.6),
    "A100": Gpu("A100 SXM 80GB", 312.0, 19.5, 19.5, 2039.0, 79.2),
    "A40": Gpu("A40 48GB", 149.7, 37.4, 0.58, 696.0, 44.6),
}
EFFICIENCY = 0.5  # share of a peak rate real kernels reach (the design's 0.5-1 ms at 7B)
GPU_PROCESS_GIB = 1.0  # per GPU process: CUDA context, allocator slack, code (not modelled)
HOST_PROCESS_GIB = 0.5  # a CPU process: 0.26 GB RSS once torch, transformers and compo are
# imported, + 0.16 GB the first load keeps (tests/compo/plan/measure_roles.py, 2 CPU cores)
TOKENIZER_GIB = 0.05  # a fast tokenizer of a 128k-256k vocabulary, loaded
TOKEN_TEXT_BYTES = 4  # bytes of text per generated token sent to the judge (UTF-8, English)
NETWORK_GBIT_S = 25.0  # default network between nodes, Gbit/s (a common cloud NIC)
