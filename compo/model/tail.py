"""The last k decoder layers, the final norm and the head: what runs again per direction
when the MLPs of the last k layers move (compo.perturb.mlp_last_layers).

The body runs once per batch up to the first moved layer; pre-hooks record that layer's
input and every moved layer's keyword arguments (mask, rotary embeddings: per layer, as
families with sliding-window layers pass different masks). The tail then reruns from there
in float32 with any values of the moved tensors (torch.func.functional_call), so a
bfloat16 checkpoint's tail moves by steps its own dtype could not hold. At load time the
tail with the model's own weights is checked against what the output layer receives.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from compo.errors import ModelError
from compo.model.head import CHECK_EPS_UNITS, Head, head_input, probe_ids
from compo.model.layout import Layout, decoder_layers, moved_layer_count
from compo.model.loading import model_device
from compo.model.scoring import HeadInputs, completion_index, pad_batch, sequence_logprobs

TAIL_DTYPE = torch.float32  # the moved layers run in this dtype (master weights are float32)
FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f")  # after the last layer


@dataclass
class TailBatch:
    """One batch of sequences as the tail needs it."""

    hidden: torch.Tensor  # [B, L, d] input of the first moved layer (model dtype)
    layer_kwargs: list[dict]  # per moved layer: its keyword arguments, floats in TAIL_DTYPE
    index: torch.Tensor  # [n] flat positions in B * L that predict completion tokens


def cast_floats(value, dtype: torch.dtype):
    """`value` with every floating tensor inside (tuples, lists, dicts) cast to dtype."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple | list):
        return type(value)(cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    return value


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last decoder layer and the output layer."""
    decoder = model.get_decoder()
    for attribute in FINAL_NORMS:
        if isinstance(getattr(decoder, attribute, None), nn.Module):
            return getattr(decoder, attribute)
    raise ModelError(f"{type(model).__name__}: no final norm ({', '.join(FINAL_NORMS)}) after "
                     "the decoder layers; set compo.perturb.mlp_last_layers: 0")


@torch.no_grad()
def capture(model: nn.Module, layers: Sequence[nn.Module], **inputs
            ) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """(input of layers[0], every layer's kwargs, what the output layer receives)."""
    recorded: list[tuple[torch.Tensor, dict]] = []

    def record(module, args, kwargs):
        recorded.append((args[0] if args else kwargs["hidden_states"], dict(kwargs)))

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        head_in = head_input(model, use_cache=False, **inputs)
    finally:
        for handle in handles:
            handle.remove()
    kwargs = [{k: v for k, v in kw.items() if k != "hidden_states"} for _, kw in recorded]
    return recorded[0][0], [cast_floats(kw, TAIL_DTYPE) for kw in kwargs], head_in


class Tail:
    """Float32 copies of the last k layers and the final norm, run with moved MLP weights."""

    def __init__(self, model: nn.Module, layout: Layout, name: str = "model"):
        self.model, self.layout = model, layout
        count = moved_layer_count(layout)
        self.originals = list(decoder_layers(model, name)[-count:])
        self.layers = [copy.deepcopy(layer).to(TAIL_DTYPE).eval() for layer in self.originals]
        self.norm = copy.deepcopy(final_norm(model)).to(TAIL_DTYPE).eval()
        names = {id(m): n for n, m in model.named_modules()}
        self.prefixes = [names[id(layer)] + "." for layer in self.originals]

    def prepare(self, sequences, pad_id: int, batch_size: int) -> tuple[list[TailBatch],
                                                                        HeadInputs]:
        """Run the body once per batch; the tail's inputs and the completions' targets."""
        device = model_device(self.model)
        batches, targets, segment = [], [], []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            ids, mask = pad_batch(chunk, pad_id, device)
            hidden, kwargs, _ = capture(self.model, self.originals, input_ids=ids,
                                        attention_mask=mask)
            index, chunk_targets, chunk_segment = completion_index(chunk, ids.shape[1], start,
                                                                   device)
            batches.append(TailBatch(hidden, kwargs, index))
            targets.append(chunk_targets)
            segment.append(chunk_segment)
        targets, segment = torch.cat(targets), torch.cat(segment)
        empty = torch.empty(0, self.layout.width, device=device)
        return batches, HeadInputs(empty, targets, segment, len(sequences))

    @torch.no_grad()
    def head_input(self, batches: Sequence[TailBatch], moved: Mapping[str, torch.Tensor]
                   ) -> torch.Tensor:
        """What the output layer receives at completion positions [N, d] float32, with the
        moved tensors (by parameter name) in place of the model's."""
        out = []
        for batch in batches:
            hidden = batch.hidden.to(TAIL_DTYPE)
            for layer, prefix, kwargs in zip(self.layers, self.prefixes, batch.layer_kwargs,
                                             strict=True):
                params = {name.removeprefix(prefix): value for name, value in moved.items()
                          if name.startswith(prefix)}
                hidden = functional_call(layer, params, (hidden,), kwargs)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            hidden = self.norm(hidden)
            out.append(hidden.reshape(-1, hidden.shape[-1])[batch.index])
        return torch.cat(out)

    def logprobs(self, batches: Sequence[TailBatch], targets: HeadInputs,
                 master: torch.Tensor, head: Head, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
        """Sequence log-probs [S] under a whole stacked master [R, d]."""
        tensors = self.layout.tensors(master)
        hidden = self.head_input(batches, tensors)
        inputs = HeadInputs(hidden, targets.targets, targets.segment, targets.num_sequences)
        return sequence_logprobs(inputs, tensors[self.layout.head.name], head, dtype)

    def check(self, name: str = "model") -> float:
        """The tail with the model's own weights against the output layer's input on a
        probe; refuses a family whose forward does something else. Returns the error."""
        ids = probe_ids(self.model)
        hidden, kwargs, head_in = capture(self.model, self.originals, input_ids=ids)
        batch = TailBatch(hidden, kwargs, torch.arange(ids.shape[1], device=ids.device))
        mine = self.head_input([batch], {})
        error = float((mine - head_in[0].to(TAIL_DTYPE)).abs().max())
        largest = float(head_in.abs().max())
        allowed = CHECK_EPS_UNITS * torch.finfo(head_in.dtype).eps * (largest + 1.0)
        if not error <= allowed:
            raise ModelError(f"{name}: {type(self.model).__name__}'s last layers do not end in "
                             f"its final norm and output layer as ComPO reruns them (off by "
                             f"{error:.3g}, allowed {allowed:.3g}); set "
                             "compo.perturb.mlp_last_layers: 0 for this family")
        return error
