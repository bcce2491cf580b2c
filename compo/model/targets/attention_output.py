"""Target `attention_output`: the output layer and the attention output projection of each
of the last k layers (Llama's self_attn.o_proj, Phi's self_attn.dense, GPT-NeoX's
attention.dense, OPT's self_attn.out_proj): [d, heads * head_dim], stored transposed."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compo.errors import ModelError

ATTENTIONS = ("self_attn", "attention", "attn", "self_attention")  # the layer's attention
PROJECTIONS = ("o_proj", "out_proj", "dense", "c_proj", "wo")  # its output projection


@dataclass(frozen=True)
class AttentionOutputTarget:
    """The one nn.Linear that maps the attention heads back into the residual stream."""

    name: str = "attention_output"
    summary: str = "the attention output projections"
    in_layers: bool = True

    def linears(self, layer: nn.Module, where: str) -> list[tuple[str, nn.Linear]]:
        for attention in ATTENTIONS:
            module = getattr(layer, attention, None)
            for projection in PROJECTIONS if isinstance(module, nn.Module) else ():
                if isinstance(getattr(module, projection, None), nn.Linear):
                    return [(f"{attention}.{projection}", getattr(module, projection))]
        raise ModelError(f"{where}: no attention output projection (nn.Linear "
                         f"{{{','.join(ATTENTIONS)}}}.{{{','.join(PROJECTIONS)}}}: "
                         "linear-attention, state-space or Conv1D layers are not supported); "
                         "set compo.perturb.target: head or mlp")


TARGET = AttentionOutputTarget()
