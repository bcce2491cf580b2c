"""compo.perturb: what the directions move (a target of compo/model/targets/, the last k
layers it reaches into) and the dtype the moved layers rerun in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PerturbConfig(BaseModel):
    """Which weights the directions move (the paper's Table 5: the output layer alone, or
    it and the MLP projections of the last layers): a target of compo/model/targets/."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as StrictModel

    target: str = Field(
        "head", description="what moves: head (the output layer only), or a target that "
        "also moves weights of the last `last_layers` decoder layers (mlp: every linear "
        "weight of their MLPs; compo/model/targets/ lists them all). Likelihood oracle only; "
        "the body runs once up to the first moved layer, the moved layers and the head once "
        "per direction")
    last_layers: int = Field(0, ge=0, description="k: how many last decoder layers the "
                             "target reaches into (0 with target head)")
    tail_dtype: Literal["float64", "float32"] = Field(
        "float64", description="dtype the moved layers rerun in: float64 keeps h' - h free of "
        "the residual stream's rounding (~1e-7 relative; as fast as float32 on H100/A100, "
        "2x on CPU); float32 is faster on GPUs without float64 throughput (~1e-3 relative "
        "at r = 5e-4)")

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, data):
        """mlp_last_layers: k (configs before targets) is target: mlp, last_layers: k."""
        if not isinstance(data, dict) or "mlp_last_layers" not in data:
            return data
        data = dict(data)
        k = data.pop("mlp_last_layers")
        if "target" in data or "last_layers" in data:
            raise ValueError("compo.perturb.mlp_last_layers is the old spelling of target: mlp "
                             "with last_layers: k; remove it or target/last_layers")
        if k:  # a bad k is refused by last_layers' own check
            data.update(target="mlp", last_layers=k)
        return data

    @model_validator(mode="after")
    def _target_fits_layers(self) -> PerturbConfig:
        from compo.model.targets import target_of

        target = target_of(self.target)
        if not target.in_layers and self.last_layers:
            raise ValueError(f"compo.perturb.target {self.target} moves the output layer only; "
                             "set last_layers: 0, or target: mlp to move the last layers too")
        if target.in_layers and not self.last_layers:
            raise ValueError(f"compo.perturb.target {self.target} moves weights of the last "
                             "layers; set last_layers: k >= 1, or target: head")
        return self

    @property
    def moves_layers(self) -> bool:
        """Whether weights inside decoder layers move (the tail reruns)."""
        return self.last_layers > 0
