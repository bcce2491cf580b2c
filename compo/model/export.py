"""Export: the sparse output-layer delta of a run, and the tuned model rebuilt from it.

delta.safetensors holds `indices` (int64, flat positions in W) and `values` (float64,
W_tuned - W_base: the difference of two float32 numbers is exact in float64, so base +
delta rebuilds the tuned float32 weights bit for bit), with the shape and a fingerprint
of the base output layer in its metadata so it is only applied to the model it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from compo import fileio
from compo.errors import DeltaError
from compo.model.checkpoint import copy_with_output_layer, read_output_layer
from compo.model.loading import DTYPES


def fingerprint(weight: torch.Tensor) -> str:
    """sha256 of the float32 bytes of a weight (identifies the base output layer)."""
    data = weight.detach().float().contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def write_delta(path: str | Path, base: torch.Tensor, tuned: torch.Tensor) -> dict:
    """Save the non-zero entries of tuned - base; returns a small summary."""
    change = (tuned.double().cpu() - base.double().cpu()).reshape(-1)
    indices = change.nonzero().squeeze(1)
    metadata = {"shape": json.dumps(list(base.shape)), "base_sha256": fingerprint(base),
                "format": "compo-sparse-delta-v1"}
    fileio.write_tensors(path, {"indices": indices, "values": change[indices]}, metadata)
    return {"entries": indices.numel(), "fraction": indices.numel() / change.numel(),
            "bytes": Path(path).stat().st_size}


def read_delta(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """indices, values and metadata of a delta file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != "compo-sparse-delta-v1":
        raise DeltaError(f"{path}: not a ComPO delta file (missing format metadata)")
    tensors = fileio.read_tensors(path)
    return tensors["indices"], tensors["values"], metadata


def apply_delta_to(weight: torch.Tensor, path: str | Path) -> torch.Tensor:
    """base weight + delta (exact, as float32), after checking shape and fingerprint."""
    indices, values, metadata = read_delta(path)
    shape = json.loads(metadata["shape"])
    if list(weight.shape) != shape:
        raise DeltaError(f"{path}: delta is for an output layer of shape {shape}, the base "
                         f"model has {list(weight.shape)}; use the base the run started from")
    if fingerprint(weight) != metadata["base_sha256"]:
        raise DeltaError(f"{path}: the base model's output layer differs from the one the "
                         "delta was made from; use the run's model.path")
    tuned = weight.detach().double().cpu().clone()
    tuned.view(-1).index_add_(0, indices, values.double())
    return tuned.float()


def apply_delta(base_dir: str | Path, delta_path: str | Path, out_dir: str | Path,
                dtype: str = "float32") -> Path:
    """Rebuild the tuned model from its base directory and a delta file (the base's output
    layer read as a model loaded in `dtype` holds it, the tuned one stored in `dtype`)."""
    tuned = apply_delta_to(read_output_layer(base_dir, DTYPES[dtype]), delta_path)
    return copy_with_output_layer(base_dir, tuned, out_dir, DTYPES[dtype])
