"""The weights ComPO moves, stacked into one float32 master matrix [R, d].

Row blocks in order: the output layer [V, d], then, for each of the last k decoder layers
(compo.perturb.last_layers), every linear weight its target moves (compo/model/targets/:
the MLP's, ...) as rows of width d: a projection out of d ([I, d]: gate, up) as it is, one
into d ([d, I]: down) transposed. A
direction is one counter-based vector over the stack's R * d elements
(compo/perturbation.py), so each tensor's values start at element (first row of its block)
* d; the estimator, the shard rebuild, checkpoints and the delta work on the stack exactly
as on the output layer alone. With k = 0 the stack is the output layer itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from compo.config import PerturbConfig
from compo.errors import ModelError
from compo.model.head import output_layer
from compo.model.targets import target_of

LAYER = re.compile(r"^(.*?\blayers\.\d+)\.")  # the decoder layer a moved tensor is in


@dataclass(frozen=True)
class Block:
    """One moved tensor: its parameter name and its rows in the stack."""

    name: str  # the parameter's name in the model (its safetensors key)
    start: int  # first row in the stack
    rows: int
    transposed: bool  # stored as weight.T (a projection into d)

    @property
    def stop(self) -> int:
        return self.start + self.rows


@dataclass(frozen=True)
class Layout:
    """Where every moved tensor sits in the stacked master [R, d]."""

    blocks: tuple[Block, ...]  # blocks[0] is the output layer
    width: int  # d

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks[-1].stop, self.width

    @property
    def head(self) -> Block:
        return self.blocks[0]

    @property
    def moved_layers(self) -> tuple[Block, ...]:
        """The blocks inside decoder layers (empty when only the output layer moves)."""
        return self.blocks[1:]

    def stack(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The float32 master [R, d] from the named tensors (model orientation)."""
        parts = [tensors[b.name].detach().float() for b in self.blocks]
        parts = [p.T if b.transposed else p for b, p in zip(self.blocks, parts, strict=True)]
        return torch.cat(parts).contiguous()

    def tensor(self, master: torch.Tensor, block: Block) -> torch.Tensor:
        """A block of the master in the model's orientation (a view)."""
        rows = master[block.start : block.stop]
        return rows.T if block.transposed else rows

    def tensors(self, master: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every moved tensor of the master, by name (views, model orientation)."""
        return {b.name: self.tensor(master, b) for b in self.blocks}

    def describe(self) -> str:
        """JSON for file metadata (the delta records where its entries belong)."""
        return json.dumps({"width": self.width, "blocks": [
            [b.name, b.start, b.rows, b.transposed] for b in self.blocks]})

    @classmethod
    def from_description(cls, text: str) -> Layout:
        data = json.loads(text)
        return cls(tuple(Block(n, s, r, bool(t)) for n, s, r, t in data["blocks"]),
                   int(data["width"]))


def decoder_layers(model: nn.Module, name: str = "model") -> nn.ModuleList:
    """The decoder layers of a *ForCausalLM (get_decoder().layers)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"{name}: {type(model).__name__} has no get_decoder().layers list; "
                         "moving weights of its layers needs a Llama-style decoder; set "
                         "compo.perturb.target: head to move the output layer only")
    return layers


def layout_of(model: nn.Module, perturb: PerturbConfig | None = None, name: str = "model"
              ) -> Layout:
    """The stack of a model: its output layer, then what the target moves in each of its
    last k layers (compo.perturb.target, last_layers)."""
    perturb = perturb or PerturbConfig()
    head = output_layer(model, name)
    width = head.weight.shape[1]
    names = {id(module): module_name for module_name, module in model.named_modules()}
    blocks = [Block(f"{names[id(head)]}.weight", 0, head.weight.shape[0], False)]
    if not perturb.moves_layers:
        return Layout(tuple(blocks), width)
    target, k = target_of(perturb.target), perturb.last_layers
    layers = decoder_layers(model, name)
    if k > len(layers):
        raise ModelError(f"{name}: compo.perturb.last_layers is {k}, the model has "
                         f"{len(layers)} decoder layers")
    for layer in layers[len(layers) - k :]:
        prefix = names[id(layer)]
        for inner, linear in target.linears(layer, f"{name}: {prefix}"):
            out_features, in_features = linear.weight.shape
            if width not in (in_features, out_features):
                raise ModelError(f"{name}: {prefix}.{inner} is [{out_features}, {in_features}]"
                                 f", neither side is the hidden size {width}; set "
                                 "compo.perturb.target: head")
            transposed = in_features != width
            rows = in_features if transposed else out_features
            blocks.append(Block(f"{prefix}.{inner}.weight", blocks[-1].stop, rows, transposed))
    return Layout(tuple(blocks), width)


def moved_layer_count(layout: Layout) -> int:
    """k: how many decoder layers have moved tensors in the layout."""
    return len({layer_prefix(b.name) for b in layout.moved_layers})


def layer_prefix(name: str) -> str:
    """The decoder layer a moved tensor belongs to ('model.layers.7')."""
    found = LAYER.match(name)
    if found is None:
        raise ModelError(f"{name}: not a tensor of a decoder layer (model.layers.N....); "
                         "use a layout made by compo/model/layout.py")
    return found.group(1)


def model_tensors(model: nn.Module, layout: Layout) -> dict[str, torch.Tensor]:
    """The model's current values of every tensor in the layout."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {b.name: params[b.name] for b in layout.blocks}
