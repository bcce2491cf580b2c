"""The last k decoder layers, the final norm and the head: what runs again per direction
when weights of the last k layers move (compo.perturb.target, last_layers).

The body runs once per batch up to the first moved layer; pre-hooks record that layer's
input and every moved layer's keyword arguments (mask, rotary embeddings: per layer, as
families with sliding-window layers pass different masks). The tail then reruns from there
in float64 (compo.perturb.tail_dtype) with any values of the moved tensors stacked along
the batch, so a bfloat16 checkpoint's tail moves by steps its own dtype could not hold and
h' - h carries no cancellation of the residual stream. At load time the
tail with the model's own weights is checked against what the output layer receives.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from compo.errors import ModelError
from compo.model.head import CHECK_EPS_UNITS, Head, head_input, probe_ids
from compo.model.layout import Layout, decoder_layers, moved_layer_count
from compo.model.loading import model_device
from compo.model.scoring import HeadInputs, completion_index, pad_batch, sequence_logprobs

DEFAULT_TAIL_DTYPE = torch.float64  # h' - h of the tail carries no float32 cancellation
TAIL_DTYPES = {"float64": torch.float64, "float32": torch.float32}  # compo.perturb.tail_dtype
FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f")  # after the last layer
STACKING_PROBE = (0.9, 1.1)  # weight factors of the load-time check of stacked directions
STACKING_TOLERANCE = 1e-5  # relative: float32 rounding of bmm against the single product


@dataclass
class TailBatch:
    """One batch of sequences as the tail needs it."""

    hidden: torch.Tensor  # [B, L, d] input of the first moved layer (model dtype)
    layer_kwargs: list[dict]  # per moved layer: its keyword arguments, floats in the tail's dtype
    index: torch.Tensor  # [n] flat positions in B * L that predict completion tokens


def map_tensors(value, change: Callable[[torch.Tensor], torch.Tensor]):
    """`value` with `change` applied to every tensor inside (tuples, lists, dicts,
    dataclass instances)."""
    if isinstance(value, torch.Tensor):
        return change(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{field.name: map_tensors(getattr(value, field.name),
                                                                     change)
                                             for field in dataclasses.fields(value)})
    if isinstance(value, tuple | list):
        return type(value)(map_tensors(v, change) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, change) for k, v in value.items()}
    return value


def cast_floats(value, dtype: torch.dtype):
    """`value` with every floating tensor inside cast to dtype."""
    return map_tensors(value, lambda t: t.to(dtype) if t.is_floating_point() else t)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last decoder layer and the output layer."""
    decoder = model.get_decoder()
    for attribute in FINAL_NORMS:
        if isinstance(getattr(decoder, attribute, None), nn.Module):
            return getattr(decoder, attribute)
    raise ModelError(f"{type(model).__name__}: no final norm ({', '.join(FINAL_NORMS)}) after "
                     "the decoder layers; set compo.perturb.target: head")


@torch.no_grad()
def capture(model: nn.Module, layers: Sequence[nn.Module], dtype: torch.dtype, **inputs
            ) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """(input of layers[0], every layer's kwargs with floats in `dtype`, what the output
    layer receives)."""
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
    return recorded[0][0], [cast_floats(kw, dtype) for kw in kwargs], head_in


class StackedLinear(nn.Module):
    """A moved projection of the tail copy: its own weight, or one weight per direction
    [P, out, in], each applied to its share of a batch stacked P times (direction-major)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.stacked: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stacked is None:
            return F.linear(x, self.weight, self.bias)
        count = self.stacked.shape[0]
        out = torch.bmm(x.reshape(count, -1, x.shape[-1]), self.stacked.transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def tile_batch(value, count: int, batch: int):
    """Keyword arguments of a batch of `batch` sequences for the same batch stacked `count`
    times: tensors of rank >= 2 whose first dimension is the batch are repeated."""
    def tile(t: torch.Tensor) -> torch.Tensor:
        tiled = t.dim() >= 2 and t.shape[0] == batch
        return t.repeat(count, *[1] * (t.dim() - 1)) if tiled else t

    return map_tensors(value, tile)


class Tail:
    """Copies of the last k layers and the final norm, run with the moved weights of the
    layout (its target's projections, replaced by name)."""

    def __init__(self, model: nn.Module, layout: Layout, name: str = "model",
                 dtype: torch.dtype = DEFAULT_TAIL_DTYPE):
        self.model, self.layout, self.dtype = model, layout, dtype
        count = moved_layer_count(layout)
        self.originals = list(decoder_layers(model, name)[-count:])
        self.layers = [copy.deepcopy(layer).to(dtype).eval() for layer in self.originals]
        self.norm = copy.deepcopy(final_norm(model)).to(dtype).eval()
        names = {id(m): n for n, m in model.named_modules()}
        self.projections: dict[str, StackedLinear] = {}  # moved parameter name -> module
        for layer, original in zip(self.layers, self.originals, strict=True):
            prefix = names[id(original)] + "."
            for block in layout.moved_layers:
                if block.name.startswith(prefix):
                    self.projections[block.name] = self._stack(layer, block.name, prefix)

    @staticmethod
    def _stack(layer: nn.Module, name: str, prefix: str) -> StackedLinear:
        """Replace the projection `name` inside the layer copy by a StackedLinear."""
        path = name.removeprefix(prefix).removesuffix(".weight")
        parent_path, _, attribute = path.rpartition(".")
        parent = layer.get_submodule(parent_path)
        stacked = StackedLinear(getattr(parent, attribute))
        setattr(parent, attribute, stacked)
        return stacked

    def detached(self) -> Tail:
        """The copies that rerun (layers, norm, moved projections) without the model."""
        runner = copy.copy(self)
        runner.model, runner.originals = None, []
        return runner

    def prepare(self, sequences, pad_id: int, batch_size: int) -> tuple[list[TailBatch],
                                                                        HeadInputs]:
        """Run the body once per batch; the tail's inputs and the completions' targets."""
        device = model_device(self.model)
        batches, targets, segment = [], [], []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            ids, mask = pad_batch(chunk, pad_id, device)
            hidden, kwargs, _ = capture(self.model, self.originals, self.dtype,
                                        input_ids=ids, attention_mask=mask)
            index, chunk_targets, chunk_segment = completion_index(chunk, ids.shape[1], start,
                                                                   device)
            batches.append(TailBatch(hidden, kwargs, index))
            targets.append(chunk_targets)
            segment.append(chunk_segment)
        targets, segment = torch.cat(targets), torch.cat(segment)
        empty = torch.empty(0, self.layout.width, device=device)
        return batches, HeadInputs(empty, targets, segment, len(sequences))

    def head_input(self, batches: Sequence[TailBatch], moved: Mapping[str, torch.Tensor]
                   ) -> torch.Tensor:
        """What the output layer receives at completion positions [N, d] (the tail's dtype),
        with the moved tensors (by parameter name) in place of the model's."""
        return self.head_inputs(batches, [moved])[0]

    @torch.no_grad()
    def head_inputs(self, batches: Sequence[TailBatch],
                    moved: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """head_input for P sets of moved tensors at once: [P, N, d]. The batch is stacked
        P times, so each layer runs once for all of them."""
        count = len(moved)
        for name, projection in self.projections.items():
            values = [m.get(name) for m in moved]
            projection.stacked = None if all(v is None for v in values) else torch.stack(
                [projection.weight if v is None else v.to(self.dtype) for v in values])
        try:
            out = [self._run(batch, count) for batch in batches]
        finally:
            for projection in self.projections.values():
                projection.stacked = None
        return torch.cat(out, dim=1)

    def _run(self, batch: TailBatch, count: int) -> torch.Tensor:
        """One batch through the tail, stacked `count` times: [count, n, d]."""
        size = batch.hidden.shape[0]
        hidden = batch.hidden.to(self.dtype).repeat(count, 1, 1)
        for layer, kwargs in zip(self.layers, batch.layer_kwargs, strict=True):
            hidden = layer(hidden, **tile_batch(kwargs, count, size))
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden = self.norm(hidden)
        return hidden.reshape(count, -1, hidden.shape[-1])[:, batch.index]

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
        try:  # a family whose layers cannot run this way raises anything: a refusal
            hidden, kwargs, head_in = capture(self.model, self.originals, self.dtype,
                                              input_ids=ids)
            batch = TailBatch(hidden, kwargs, torch.arange(ids.shape[1], device=ids.device))
            mine = self.head_input([batch], {})
        except Exception as error:
            raise ModelError(f"{name}: {type(self.model).__name__}'s last layers cannot be "
                             f"rerun as ComPO reruns them ({type(error).__name__}: {error}); "
                             "set compo.perturb.target: head for this family") from error
        error = float((mine - head_in[0].to(self.dtype)).abs().max())
        largest = float(head_in.abs().max())
        allowed = CHECK_EPS_UNITS * torch.finfo(head_in.dtype).eps * (largest + 1.0)
        if not error <= allowed:
            raise ModelError(f"{name}: {type(self.model).__name__}'s last layers do not end in "
                             f"its final norm and output layer as ComPO reruns them (off by "
                             f"{error:.3g}, allowed {allowed:.3g}); set "
                             "compo.perturb.target: head for this family")
        self._check_stacking([batch], name)
        return error

    def _check_stacking(self, batches: list[TailBatch], name: str) -> None:
        """Two sets of moved weights run stacked must give what each gives alone (and
        not the same)."""
        own = {n: p.weight for n, p in self.projections.items()}
        sets = [{n: w * factor for n, w in own.items()} for factor in STACKING_PROBE]
        stacked = self.head_inputs(batches, sets)
        alone = torch.stack([self.head_input(batches, moved) for moved in sets])
        if torch.equal(alone[0], alone[1]):  # e.g. a forward reading .weight directly
            raise ModelError(f"{name}: {type(self.model).__name__}'s last layers ignore the "
                             "moved weights as ComPO passes them (through the modules); set "
                             "compo.perturb.target: head for this family")
        error = float((stacked - alone).abs().max() / (alone.abs().max() + 1.0))
        if not error <= STACKING_TOLERANCE:
            raise ModelError(f"{name}: {type(self.model).__name__}'s last layers mix the "
                             f"sequences of a batch (stacked directions off by {error:.3g}); "
                             "set compo.perturb.target: head for this family")
