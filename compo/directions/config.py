"""compo.directions: the family perturbations come from (dense Gaussian or low rank)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DirectionsConfig(BaseModel):
    """Which directions the run draws; checkpoints record it and resume refuses another."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as StrictModel

    kind: Literal["gaussian", "low_rank"] = Field(
        "gaussian", description="gaussian: dense N(0, 1) entries over the moved layer (the "
        "paper's); low_rank: z = sum_k a_k b_k^T / sqrt(rank), O(rank (V + d)) per direction")
    rank: int | None = Field(None, gt=0, description="r, the rank of low_rank directions "
                             "(e.g. 4); unset with kind gaussian")

    @model_validator(mode="after")
    def _rank_with_low_rank(self) -> DirectionsConfig:
        if (self.kind == "low_rank") != (self.rank is not None):
            raise ValueError(f"compo.directions.rank (got {self.rank}) goes with kind: low_rank "
                             "only; set rank: 4 with low_rank, or remove rank for gaussian")
        return self

    @property
    def name(self) -> str:
        """How checkpoints and benchmarks name the family: gaussian, rank4, ..."""
        return "gaussian" if self.kind == "gaussian" else f"rank{self.rank}"

    def refusal(self, target: str = "head", products: str = "auto") -> str | None:
        """Why these directions cannot run with the rest of the config (one line), or None."""
        if self.kind == "gaussian":
            return None
        if target != "head":
            return (f"compo.directions.kind low_rank moves the output layer only, not "
                    f"compo.perturb.target {target}; set target: head or kind: gaussian")
        if products == "fused":
            return ("compo.products: fused makes dense Gaussian directions in registers; "
                    "low_rank runs its own eager products: set products: auto or eager")
        return None
