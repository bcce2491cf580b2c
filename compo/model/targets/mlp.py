"""Target `mlp`: the output layer and every linear weight of the MLP of the last k layers
(the paper's Table 5)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compo.errors import ModelError


@dataclass(frozen=True)
class MLPTarget:
    """The nn.Linear modules under each moved layer's .mlp (gate, up, down or fused)."""

    name: str = "mlp"
    summary: str = "the MLPs"
    in_layers: bool = True

    def linears(self, layer: nn.Module, where: str) -> list[tuple[str, nn.Linear]]:
        mlp = getattr(layer, "mlp", None)
        found = [] if mlp is None else [(f"mlp.{n}", m) for n, m in mlp.named_modules()
                                        if isinstance(m, nn.Linear)]
        if not found:
            kind = ("no .mlp" if mlp is None
                    else f"an MLP ({type(mlp).__name__}) without nn.Linear")
            raise ModelError(f"{where}: {kind} projections (GPT-2's Conv1D, mixture-of-experts "
                             "blocks and MLPs outside .mlp are not supported); set "
                             "compo.perturb.target: head")
        return found


TARGET = MLPTarget()
