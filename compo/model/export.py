"""Export: the sparse delta of a run, and the tuned model rebuilt from it.

delta.safetensors holds `indices` (int64, flat positions in the stacked master [R, d] of
compo/model/layout.py: the output layer W when only it moves) and `values` (float64,
W_tuned - W_base: the difference of two float32 numbers is exact in float64, so base +
delta rebuilds the tuned float32 weights bit for bit), with the shape and a fingerprint
of the base in its metadata so it is only applied to the model it came from, and the
layout: which tensor each row belongs to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from compo import fileio
from compo.config import PerturbConfig
from compo.errors import DeltaError, ModelError
from compo.model.checkpoint import copy_with_tensors, meta_network, read_master
from compo.model.layout import Layout, layout_of, moved_layer_count
from compo.model.loading import DTYPES
from compo.model.targets import layer_targets


def fingerprint(weight: torch.Tensor) -> str:
    """sha256 of the float32 bytes of a weight (identifies the base the delta is for)."""
    data = weight.detach().float().contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def write_delta(path: str | Path, base: torch.Tensor, tuned: torch.Tensor,
                layout: Layout | None = None) -> dict:
    """Save the non-zero entries of tuned - base; returns a small summary."""
    change = (tuned.double().cpu() - base.double().cpu()).reshape(-1)
    indices = change.nonzero().squeeze(1)
    metadata = {"shape": json.dumps(list(base.shape)), "base_sha256": fingerprint(base),
                "format": "compo-sparse-delta-v1"}
    if layout is not None:
        metadata["layout"] = layout.describe()
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
        raise DeltaError(f"{path}: delta is for moved weights of shape {shape}, the base "
                         f"model has {list(weight.shape)}; use the base the run started from")
    if fingerprint(weight) != metadata["base_sha256"]:
        raise DeltaError(f"{path}: the base model's moved weights differ from the ones the "
                         "delta was made from; use the run's model.path")
    tuned = weight.detach().double().cpu().clone()
    tuned.view(-1).index_add_(0, indices, values.double())
    return tuned.float()


def apply_delta(base_dir: str | Path, delta_path: str | Path, out_dir: str | Path,
                dtype: str = "float32") -> Path:
    """Rebuild the tuned model from its base directory and a delta file (the base's moved
    tensors read as a model loaded in `dtype` holds them, the tuned ones stored in
    `dtype`)."""
    _, _, metadata = read_delta(delta_path)
    recorded = Layout.from_description(metadata["layout"]) if "layout" in metadata else None
    layout, base = read_master(base_dir, DTYPES[dtype], recorded_target(base_dir, recorded))
    if recorded is not None and recorded != layout:
        raise DeltaError(f"{delta_path}: made for tensors {[b.name for b in recorded.blocks]}; "
                         f"{base_dir} has {[b.name for b in layout.blocks]}")
    tuned = apply_delta_to(base, delta_path)
    return copy_with_tensors(base_dir, layout.tensors(tuned), out_dir, DTYPES[dtype])


def recorded_target(base_dir: str | Path, recorded: Layout | None) -> PerturbConfig:
    """The target a delta's layout was made with: the registered one that stacks the same
    tensors of the base (mlp when none does: the caller names the tensors)."""
    if recorded is None or not recorded.moved_layers:
        return PerturbConfig()
    meta, k = meta_network(base_dir), moved_layer_count(recorded)
    for target in layer_targets():
        perturb = PerturbConfig(target=target.name, last_layers=k)
        try:
            if layout_of(meta, perturb, str(base_dir)) == recorded:
                return perturb
        except ModelError:
            continue
    return PerturbConfig(target="mlp", last_layers=k)
