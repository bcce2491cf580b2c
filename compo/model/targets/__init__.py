"""What the directions move: a registry of targets, one module each.

A target names the linear weights it moves inside each of the last k decoder layers (the
output layer always moves); compo/model/layout.py stacks them, and the tail
(compo/model/tail.py), the checkpoint, the export and `compo conformance` work on that
layout alone. Adding a target: one module with a TARGET and one line in TARGETS below.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from compo.model.targets import attention_output, head, mlp


class Target(Protocol):
    """Which linear weights of a decoder layer move (none: only the output layer)."""

    name: str  # compo.perturb.target
    summary: str  # what moves in each layer, for tables ("the MLPs")
    in_layers: bool  # False: the output layer alone (compo.perturb.last_layers is 0)

    def linears(self, layer: nn.Module, where: str) -> list[tuple[str, nn.Linear]]:
        """(name inside the layer, module) of every moved weight; ModelError if none."""
        ...


TARGETS: dict[str, Target] = {target.name: target for target in (
    head.TARGET,
    mlp.TARGET,
    attention_output.TARGET,
)}


def target_of(name: str) -> Target:
    """The registered target `name`; a ValueError naming the registered ones."""
    if name not in TARGETS:
        raise ValueError(f"compo.perturb.target {name!r} is not a target; use one of "
                         f"{', '.join(TARGETS)}")
    return TARGETS[name]


def layer_targets() -> list[Target]:
    """The targets that move weights inside the decoder layers (conformance checks each)."""
    return [target for target in TARGETS.values() if target.in_layers]
