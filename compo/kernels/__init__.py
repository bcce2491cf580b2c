"""Kernels that generate directions where they are used: the compiled CPU kernel (cpu.py,
directions.c) and the fused Triton kernel for CUDA (fused.py, imports triton lazily)."""
