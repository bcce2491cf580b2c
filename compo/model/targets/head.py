"""Target `head`: the output layer alone (the paper's default)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class HeadTarget:
    """Nothing inside the decoder layers moves."""

    name: str = "head"
    summary: str = "the output layer"
    in_layers: bool = False

    def linears(self, layer: nn.Module, where: str) -> list[tuple[str, nn.Linear]]:
        return []


TARGET = HeadTarget()
