"""What a causal LM does from its output layer's input to its logits: captured, reproduced,
and checked against the model itself.

  logits = softcap(scale * (h W^T + b))
h is exactly what the lm_head module receives (captured by a forward pre-hook, so whatever
the body or *ForCausalLM.forward does before the head is included), W the output weight
(the only tensor ComPO moves), b the lm_head bias (Phi), scale the product of the config
fields that multiply or divide the logits (HEAD_FIELDS: Cohere's logit_scale, Granite's
logits_scaling, ...) and softcap the final soft-capping cap * tanh(x / cap) (Gemma-2/3).
At load time (verified_head) the model runs a right-padded batch of sequences of different
lengths and each sequence alone; a family whose logits depend on the padding or on later
tokens, or whose forward does something else after the output layer, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compo.errors import ModelError

PROBE_TOKENS = 12  # positions of the load-time probe's longest sequence
PROBE_LENGTHS = (PROBE_TOKENS, 8, 5)  # one right-padded batch; the shorter ones are prefixes
# the check allows this many units of the model dtype's rounding of its largest logit
# (float32: ~1e-5 of it; bfloat16, whose logits are rounded to 8 bits: ~6%)
CHECK_EPS_UNITS = 8
# a padded batch against one sequence at a time, or a prefix against the whole sequence:
# two forwards whose bodies may round differently (kernels chosen by shape), so 4x more
BODY_EPS_UNITS = 4 * CHECK_EPS_UNITS

# How *ForCausalLM.forward applies a config field after its lm_head (one line per use).
MULTIPLY, DIVIDE, SOFTCAP, NOT_AFTER = "multiply", "divide", "softcap", "not after the lm_head"
HEAD_FIELDS = {
    "logit_scale": MULTIPLY,  # Cohere, Cohere2, Cohere2Moe, CohereCompass
    "lm_head_multiplier": MULTIPLY,  # FalconH1
    "logits_scaling": DIVIDE,  # Granite, GraniteSWA, GraniteMoe, GraniteMoeShared/Hybrid/SWA
    "final_logit_softcapping": SOFTCAP,  # Gemma2/3/3n/4, VaultGemma, NanoChat, Beam, Inkling2
    "logits_soft_cap": SOFTCAP,  # RecurrentGemma
    "output_logit_soft_cap": SOFTCAP,  # xLSTM
}
FAMILY_HEAD_FIELDS = {  # classes that use a field of HEAD_FIELDS otherwise
    "HyperCLOVAXForCausalLM": {"logits_scaling": MULTIPLY},  # muP: multiplies
    "MiniCPM3ForCausalLM": {"logits_scaling": NOT_AFTER},  # divides h: inside the captured input
    "MptForCausalLM": {"logit_scale": NOT_AFTER},  # transformers' MPT does not apply it
    "Gemma3ForConditionalGeneration": {"final_logit_softcapping": NOT_AFTER},  # nor this
}
# words of config fields that scale or cap something (named when a family is refused)
SCALE_WORDS = frozenset({"scale", "scaling", "multiplier", "softcap", "softcapping", "cap"})
CAUSAL_WORDS = ("decoder", "causal", "bidirectional")  # flags that decide causal attention


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


def text_config(model: nn.Module):
    """The config of the model's text decoder (composite models keep it in text_config)."""
    try:
        return model.config.get_text_config(decoder=True)
    except ValueError:  # several candidates: the top-level config is what the head reads
        return model.config


def head_fields(model: nn.Module) -> dict[str, tuple[str, float]]:
    """The config fields the family applies after its lm_head: field -> (use, value)."""
    config = text_config(model)
    uses = HEAD_FIELDS | FAMILY_HEAD_FIELDS.get(type(model).__name__, {})
    found = {field: (use, getattr(config, field, None)) for field, use in uses.items()}
    found = {field: (use, value) for field, (use, value) in found.items()
             if value is not None and use != NOT_AFTER}
    for field, (_, value) in found.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelError(f"{type(model).__name__}: config field {field}={value!r} is not a "
                             "number; ComPO reads it as the logits' multiplier or soft-cap")
    return {field: (use, float(value)) for field, (use, value) in found.items()}


def head_of(model: nn.Module) -> Head:
    """The family's head, from the lm_head module and the config fields that act on it."""
    layer = output_layer(model)
    bias = None if layer.bias is None else layer.bias.detach().float()
    scale, cap = 1.0, None
    for use, value in head_fields(model).values():
        if use == MULTIPLY:
            scale *= value
        elif use == DIVIDE:
            scale /= value
        else:
            cap = value
    return Head(bias, scale, cap)


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


@dataclass
class Probe:
    """The model's own logits on the load-time probe and what its output layer received."""

    lengths: list[int]
    singles: list[torch.Tensor]  # [L_i, V'] float32: each sequence alone
    batch: torch.Tensor  # [B, W, V'] float32: the sequences in one right-padded batch
    hidden: torch.Tensor  # [B, W, d] the output layer's input in that batch (model dtype)


@torch.no_grad()
def run_probe(model: nn.Module, name: str = "model") -> Probe:
    """PROBE_LENGTHS prefixes of probe_ids, alone and right-padded in one batch (with the
    attention mask; pad id: the config's pad_token_id, else 0). A raw error of the family's
    forward becomes a ModelError."""
    ids = probe_ids(model)[0]
    sequences = [ids[:length] for length in PROBE_LENGTHS]
    pad_id = getattr(text_config(model), "pad_token_id", None)
    batch = torch.full((len(sequences), PROBE_TOKENS), pad_id if isinstance(pad_id, int) else 0,
                       dtype=ids.dtype, device=ids.device)
    mask = torch.zeros_like(batch)
    for row, seq in enumerate(sequences):
        batch[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    received = []
    handle = output_layer(model, name).register_forward_pre_hook(
        lambda module, args: received.append(args[0]))
    try:
        singles = [model(input_ids=seq[None]).logits[0].float() for seq in sequences]
        logits = model(input_ids=batch, attention_mask=mask).logits.float()
    except Exception as error:  # whatever the family raises, the user gets one clear line
        raise ModelError(f"{name}: {type(model).__name__}'s forward fails on the load-time "
                         f"probe (a right-padded batch of {len(sequences)} sequences and each "
                         f"alone): {type(error).__name__}: {error}. ComPO cannot score this "
                         "model family") from error
    finally:
        handle.remove()
    if not received:
        raise ModelError(f"{name}: {type(model).__name__}'s forward never called its output "
                         "layer; ComPO cannot see what the head consumes")
    return Probe(list(PROBE_LENGTHS), singles, logits, received[-1])


def config_values(model: nn.Module, wanted) -> str:
    """'field=value, ...' for the text config's fields whose name and value `wanted` takes."""
    pairs = [f"{k}={v}" for k, v in sorted(text_config(model).to_dict().items())
             if wanted(k, v)]
    return ", ".join(pairs) or "none"


def scale_like(key: str, value) -> bool:
    """A float config field named like a multiplier, scaling or soft-cap."""
    return isinstance(value, float) and bool(SCALE_WORDS & set(key.split("_")))


def verified_head(model: nn.Module, name: str = "model") -> Head:
    """head_of(model), after checking on a right-padded probe batch that it reproduces the
    model's own logits, and that those equal each sequence's logits alone (ComPO scores
    right-padded batches of a causal LM); a ModelError naming the cause otherwise."""
    probe = run_probe(model, name)
    check_shape(model, probe, name)
    check_padding_and_causality(model, probe, name)
    head = head_of(model)
    check_reconstruction(model, head, probe, name)
    return head


def check_shape(model: nn.Module, probe: Probe, name: str) -> None:
    """The logits are [batch, positions, one per output layer row]; else a refusal."""
    rows = output_layer(model).weight.shape[0]
    expected = (len(probe.lengths), PROBE_TOKENS, rows)
    if tuple(probe.batch.shape) == expected:
        return
    family, shape = type(model).__name__, tuple(probe.batch.shape)
    if shape[:-1] == expected[:-1]:
        fields = config_values(model, lambda k, v: v == shape[-1] and type(v) is int)
        raise ModelError(
            f"{name}: {family} returns {shape[-1]} logits per position but its output layer "
            f"has {rows} rows: it cuts the logits (config fields of that value: {fields}). "
            "ComPO moves and scores every row, so this model family is not supported")
    raise ModelError(f"{name}: {family} returns logits of shape {list(shape)} for a batch of "
                     f"{expected[0]} x {expected[1]} tokens, not [batch, positions, {rows}]; "
                     "ComPO cannot score this model family")


def check_padding_and_causality(model: nn.Module, probe: Probe, name: str) -> None:
    """Each sequence's logits in the padded batch equal its logits alone, and a prefix's
    equal the whole sequence's first positions."""
    family = type(model).__name__
    eps = torch.finfo(output_layer(model).weight.dtype).eps
    allowed = BODY_EPS_UNITS * eps * (max(float(own.abs().max()) for own in probe.singles) + 1)
    rows = list(enumerate(probe.lengths))
    padded = max(float((probe.batch[i, :n] - probe.singles[i]).abs().max()) for i, n in rows)
    if not padded <= allowed:
        raise ModelError(
            f"{name}: {family} gives a sequence other logits in a right-padded batch than "
            f"alone (off by {padded:.3g}, allowed {allowed:.3g}): its forward does not follow "
            "attention_mask under right padding, and ComPO scores right-padded batches. This "
            "model family is not supported; scoring it would be silently wrong")
    later = max(float((probe.singles[i] - probe.singles[0][:n]).abs().max()) for i, n in rows)
    if not later <= allowed:
        flags = config_values(model, lambda k, v: isinstance(v, bool)
                              and any(word in k for word in CAUSAL_WORDS))
        raise ModelError(
            f"{name}: {family}'s logits at a position change with later tokens (off by "
            f"{later:.3g}, allowed {allowed:.3g}): it is not a causal LM (config flags: "
            f"{flags}), so its log pi(y|x) would see y. Use a causal LM checkpoint")


@torch.no_grad()
def check_reconstruction(model: nn.Module, head: Head, probe: Probe, name: str) -> None:
    """head.logits of what the output layer received equals the model's own logits."""
    weight = output_layer(model).weight
    own = torch.cat([probe.batch[i, :n] for i, n in enumerate(probe.lengths)])  # [N, V]
    hidden = torch.cat([probe.hidden[i, :n] for i, n in enumerate(probe.lengths)])
    error = float((head.logits(hidden, weight) - own).abs().max())
    allowed = CHECK_EPS_UNITS * torch.finfo(weight.dtype).eps * (float(own.abs().max()) + 1.0)
    if error <= allowed:
        return
    used = ", ".join(f"{k}={v} ({use})" for k, (use, v) in head_fields(model).items())
    others = config_values(model, lambda k, v: scale_like(k, v) and k not in head_fields(model))
    extra = [n for n, _ in output_layer(model).named_parameters() if n not in ("weight", "bias")]
    raise ModelError(
        f"{name}: {type(model).__name__} computes logits that ComPO does not reproduce (off by "
        f"{error:.3g} on a probe, allowed {allowed:.3g}); it reproduces the lm_head bias and "
        f"config fields {', '.join(HEAD_FIELDS)} (here: {used or 'none set'}). Other "
        f"scalings in its config: {others}; lm_head parameters besides weight and bias: "
        f"{', '.join(extra) or 'none'}. This model family is not supported; scoring it "
        "would be silently wrong")
