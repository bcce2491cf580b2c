"""The output layer read from, and written into, a checkpoint's safetensors files.

What a coordinator needs of a model is its output layer: this reads it without building
the network (a 70B checkpoint never has to fit in the head node's memory), and the export
writes a copy of the checkpoint whose output layer is replaced, tensor for tensor, so the
body's files are copied as they are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from compo import fileio
from compo.config import PerturbConfig
from compo.errors import ModelError
from compo.model.layout import Layout, layout_of

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HEAD_SHARD = "model-output-layer.safetensors"  # where an untied head goes in a sharded copy
PICKLED = {".bin", ".pt", ".pth", ".ckpt"}  # weights not copied (the safetensors are used)


def meta_network(path: str | Path) -> torch.nn.Module:
    """The architecture of a checkpoint built on the meta device (no weights are loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def head_names(path: str | Path) -> tuple[str, str | None]:
    """(output layer weight name, the input embedding's name when the two are tied)."""
    network = meta_network(path)
    names = {id(module): name for name, module in network.named_modules()}
    head = network.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ModelError(f"{path}: {type(network).__name__} has no linear output layer; ComPO "
                         "needs a causal LM with an lm_head")
    tied = getattr(network, "all_tied_weights_keys", None) or {}
    head_name = f"{names[id(head)]}.weight"
    return head_name, tied.get(head_name)


def weight_files(path: str | Path) -> dict[str, str]:
    """Tensor name -> safetensors file name of a checkpoint directory."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        return json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
    if (path / SINGLE_FILE).is_file():
        with safe_open(str(path / SINGLE_FILE), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), SINGLE_FILE)
    raise ModelError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}; save the model with "
                     "save_pretrained(safe_serialization=True) (pickled weights are not read)")


def read_tensor(path: str | Path, name: str) -> torch.Tensor:
    """One tensor of a checkpoint, read from the file that holds it."""
    files = weight_files(path)
    if name not in files:
        raise ModelError(f"{path}: the checkpoint has no tensor {name}")
    with safe_open(str(Path(path) / files[name]), framework="pt") as handle:
        return handle.get_tensor(name)


def read_output_layer(path: str | Path, dtype: torch.dtype) -> torch.Tensor:
    """The float32 master copy of the output layer, as a model loaded in `dtype` holds it."""
    head, tied_to = head_names(path)
    files = weight_files(path)
    name = head if head in files else tied_to
    if name is None or name not in files:
        raise ModelError(f"{path}: the checkpoint has no output layer ({head} missing; it would "
                         "be random). Use a causal LM checkpoint (*ForCausalLM)")
    return read_tensor(path, name).to(dtype).float()


def read_master(path: str | Path, dtype: torch.dtype, perturb: PerturbConfig | None = None
                ) -> tuple[Layout, torch.Tensor]:
    """The layout and float32 stacked master of everything the directions move
    (compo/model/layout.py), read from the files as a model loaded in `dtype` holds it."""
    layout = layout_of(meta_network(path), perturb, str(path))
    tensors = {layout.head.name: read_output_layer(path, dtype)}
    for block in layout.moved_layers:
        tensors[block.name] = read_tensor(path, block.name).to(dtype).float()
    return layout, layout.stack(tensors)


def copy_with_output_layer(base: str | Path, head: torch.Tensor, out: str | Path,
                           dtype: torch.dtype) -> Path:
    """A copy of checkpoint `base` in `out` whose output layer is `head` (stored in `dtype`);
    a head that was tied to the input embedding becomes a tensor of its own."""
    return copy_with_tensors(base, {head_names(base)[0]: head}, out, dtype)


def copy_with_tensors(base: str | Path, replaced: dict[str, torch.Tensor], out: str | Path,
                      dtype: torch.dtype) -> Path:
    """A copy of checkpoint `base` in `out` with the named tensors replaced (stored in
    `dtype`); the files that hold none of them are copied as they are."""
    base, out = Path(base), Path(out)
    head, _ = head_names(base)
    files = weight_files(base)
    default = SINGLE_FILE if (base / SINGLE_FILE).is_file() else HEAD_SHARD  # an untied head
    targets: dict[str, list[str]] = {}
    for name in replaced:
        if name not in files and name != head:
            raise ModelError(f"{base}: the checkpoint has no tensor {name}")
        targets.setdefault(files.get(name, default), []).append(name)
    building = out.parent / f".{out.name}.partial"  # `out` appears complete or not at all
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for item in base.iterdir():
        if item.is_file() and item.name not in targets and item.suffix not in PICKLED:
            shutil.copy2(item, building / item.name)
    for target, names in targets.items():
        tensors, metadata = {}, {"format": "pt"}
        if (base / target).is_file():
            with safe_open(str(base / target), framework="pt") as handle:
                metadata = handle.metadata()
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        for name in names:
            tensors[name] = replaced[name].detach().to("cpu", dtype).contiguous()
        fileio.write_tensors(building / target, tensors, metadata)
    if head in replaced and head not in files:
        untie(building, head, default)
    shutil.rmtree(out, ignore_errors=True)
    building.rename(out)
    return out


def untie(out: Path, name: str, shard: str) -> None:
    """Record in the copy that the output layer is now a tensor of its own."""
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tie_word_embeddings"] = False
    fileio.write_json(config_path, config)
    index = out / INDEX_FILE
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"][name] = shard
        fileio.write_json(index, data)
