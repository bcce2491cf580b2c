"""What a causal LM does from its output layer's input to its logits: captured, reproduced,
and checked against the model itself.

  logits = softcap(scale * (h W^T + b))
h is exactly what the lm_head module receives (captured by a forward pre-hook, so whatever
the body or *ForCausalLM.forward does before the head is included), W the output weight
(the only tensor ComPO moves), b the lm_head bias (Phi), scale the logit multiplier
(Cohere's logit_scale, 1 / logits_scaling for Granite) and softcap the final soft-capping
cap * tanh(x / cap) (Gemma-2/3). At load time the reconstruction is compared with the
model's own logits on a probe; a family whose forward does something else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compo.errors import ModelError

PROBE_TOKENS = 12  # positions of the load-time check
# the check allows this many units of the model dtype's rounding of its largest logit
# (float32: ~1e-5 of it; bfloat16, whose logits are rounded to 8 bits: ~6%)
CHECK_EPS_UNITS = 8
HANDLED_FIELDS = ("logit_scale", "logits_scaling", "final_logit_softcapping")


def output_layer(model: nn.Module, name: str = "model") -> nn.Linear:
    """The lm_head; a clear error for models without a linear output layer."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ModelError(f"{name}: no linear output layer (get_output_embeddings() returned "
                         f"{type(head).__name__}); ComPO needs a causal LM with an lm_head, "
                         "e.g. a *ForCausalLM model")
    return head


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-2 style final soft-capping; identity when cap is None."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


@dataclass(frozen=True)
class Head:
    """The output layer's fixed parts: bias, logit scale, soft-cap (W is passed in)."""

    bias: torch.Tensor | None  # [V] float32
    scale: float
    cap: float | None

    def pre_cap(self, hidden: torch.Tensor, weight: torch.Tensor,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """scale * (h W^T + b): [N, V] for hidden [N, d], weight [V, d], in `dtype`."""
        logits = hidden.to(dtype) @ weight.to(dtype).T
        if self.bias is not None:
            logits += self.bias.to(logits.device, dtype)
        return logits * self.scale if self.scale != 1.0 else logits

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Logits [N, V] as the model computes them, in `dtype` (float32 by default)."""
        return softcap(self.pre_cap(hidden, weight, dtype), self.cap)


PLAIN = Head(None, 1.0, None)


def head_of(model: nn.Module) -> Head:
    """The family's head, from the lm_head module and the config fields that act on it."""
    layer = output_layer(model)
    bias = None if layer.bias is None else layer.bias.detach().float()
    scale = float(getattr(model, "logit_scale", None) or 1.0)  # Cohere multiplies
    scaling = getattr(model.config, "logits_scaling", None)  # Granite divides
    if scaling:
        scale /= float(scaling)
    return Head(bias, scale, getattr(model.config, "final_logit_softcapping", None))


class _Captured(Exception):
    """Raised by the pre-hook to stop the forward pass once the head's input is known."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__("output layer input captured")
        self.hidden = hidden


@torch.no_grad()
def head_input(model: nn.Module, **inputs) -> torch.Tensor:
    """What the output layer receives for `inputs` ([B, L, d], model dtype); the forward
    stops there, so no logits are computed (a Cache passed in is still filled)."""

    def capture(module, args):
        raise _Captured(args[0])

    handle = output_layer(model).register_forward_pre_hook(capture)
    try:
        model(**inputs)
    except _Captured as captured:
        return captured.hidden
    finally:
        handle.remove()
    raise ModelError(f"{type(model).__name__}: its forward never called the output layer; "
                     "ComPO cannot see what the head consumes")


@torch.no_grad()
def head_error(model: nn.Module, head: Head, ids: torch.Tensor) -> tuple[float, float]:
    """(largest |reconstructed - model's own logits|, largest |logit|) on token ids [1, L]."""
    own = model(input_ids=ids).logits[0].float()
    mine = head.logits(head_input(model, input_ids=ids)[0], output_layer(model).weight)
    return float((mine - own).abs().max()), float(own.abs().max())


def probe_ids(model: nn.Module) -> torch.Tensor:
    """A fixed short sequence of token ids [1, PROBE_TOKENS] spread over the vocabulary."""
    vocab = output_layer(model).weight.shape[0]
    steps = torch.arange(PROBE_TOKENS) * (vocab // PROBE_TOKENS or 1) + 1
    return (steps % vocab)[None].to(output_layer(model).weight.device)


def verified_head(model: nn.Module, name: str = "model") -> Head:
    """head_of(model), after checking it reproduces the model's own logits on a probe."""
    head = head_of(model)
    error, largest = head_error(model, head, probe_ids(model))
    dtype = output_layer(model).weight.dtype
    allowed = CHECK_EPS_UNITS * torch.finfo(dtype).eps * (largest + 1.0)
    if not error <= allowed:
        fields = sorted(key for key in model.config.to_dict()
                        if any(word in key for word in ("logit", "softcap", "lm_head"))
                        and key not in HANDLED_FIELDS)
        raise ModelError(
            f"{name}: {type(model).__name__} computes logits that ComPO does not reproduce "
            f"(off by {error:.3g} on a probe, allowed {allowed:.3g}); it reproduces the "
            f"lm_head bias and config fields {', '.join(HANDLED_FIELDS)}. Config fields "
            f"that may act on the logits: {', '.join(fields) or 'none named'}. This model "
            "family is not supported; scoring it would be silently wrong")
    return head
