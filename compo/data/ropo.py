"""ROPO's loss and the ROPO split criterion (Liang et al., "ROPO: Robust Preference
Optimization for Large Language Models", arXiv 2404.04102, ICML 2025).

The loss, with x = beta * ((log pi(y+) - log pi_ref(y+)) - (log pi(y-) - log pi_ref(y-)))
the DPO reward margin and alpha > 0 the trade-off:
    l_ropo(x) = 4 alpha / (1 + alpha)^2 * (-log sigmoid(x))   (the DPO loss)
              + 4 alpha^2 / (1 + alpha)^2 * sigmoid(-x)          (a bounded, symmetric loss)
Its gradient weight, sigma(-x) * (c_dpo + c_reg * sigma(x)), stays bounded where the model
disagrees most with the label (x -> -inf: c_dpo), which is how ROPO "suppresses the
gradients from samples with high uncertainty"; samples with the largest loss are the ones
ROPO identifies as noisy (its iterative filtering drops them).
Source of the formula: the stored copies of the paper this project can read (arXiv HTML
v1/v2, the PMLR page) returned only the abstract, so the loss section's text could not be
checked here; the formula above is the ICML version's as recalled, NOT verified against
the paper's text. Supporting, not authoritative: a `ropo_loss` in a public repository of the
code index (a third party's, unnamed there) has the same two terms, alpha * sigmoid(-x) -
gamma * logsigmoid(x), with its own constants (0.2, 0.1) instead of the normalised pair.
tests/compo/data/test_ropo.py pins the code to the formula by hand computation.

As a split criterion (`split.criterion: ropo`) the reference model is the policy and there
is no second model to be the reference, so x = beta * (log pi(y+) - log pi(y-)): ranking by
l_ropo is then ranking by that margin from the most negative (the model prefers y-: the
label is likely wrong), a different notion of "noisy" from ComPO's small |margin|.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from compo.config import StrictModel
from compo.data.ches import QUANTILES, ches_noisy_mask, spearman
from compo.data.split import Criterion, CriterionResult


class RopoConfig(StrictModel):
    """ROPO as a split criterion: noisy = the highest ROPO loss under the reference model."""

    enabled: bool = Field(True, description="compute the ROPO loss next to the margin (free: "
                          "it needs only the margins) and report the three-way overlap")
    alpha: float = Field(2.0, gt=0, description="ROPO's trade-off alpha (the loss values only; "
                         "the ranking does not depend on it)")
    beta: float = Field(0.1, gt=0, description="DPO's beta in the reward margin")
    top_fraction: float | None = Field(
        None, gt=0, le=1, description="noisy = this fraction of pairs with the highest loss")
    threshold: float | None = Field(None, description="noisy = ROPO loss >= threshold")

    @model_validator(mode="after")
    def _one_rule(self) -> RopoConfig:
        if self.top_fraction is not None and self.threshold is not None:
            raise ValueError("set either ropo.top_fraction or ropo.threshold, not both "
                             "(neither: as many pairs as the margin marks noisy)")
        return self


def ropo_coefficients(alpha: float) -> tuple[float, float]:
    """(weight of the DPO loss, weight of sigmoid(-x)): 4a/(1+a)^2 and 4a^2/(1+a)^2."""
    scale = 4.0 / (1.0 + alpha) ** 2
    return scale * alpha, scale * alpha * alpha


def ropo_losses(margins: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """Per-pair ROPO loss [K] of reward margins [K] (log-ratio differences, before beta)."""
    x = beta * margins
    dpo_weight, bounded_weight = ropo_coefficients(alpha)
    return dpo_weight * -F.logsigmoid(x) + bounded_weight * torch.sigmoid(-x)


def agreement(masks: dict[str, torch.Tensor]) -> dict:
    """How noisy sets agree: size of each, pairs per combination, pairwise Jaccard."""
    names = list(masks)
    groups: dict[str, int] = {}
    for index in range(next(iter(masks.values())).numel()):
        key = "+".join(name for name in names if masks[name][index]) or "none (clean)"
        groups[key] = groups.get(key, 0) + 1
    jaccard = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            union = int((masks[a] | masks[b]).sum())
            jaccard[f"{a}/{b}"] = int((masks[a] & masks[b]).sum()) / union if union else 1.0
    return {"noisy": {name: int(mask.sum()) for name, mask in masks.items()},
            "groups": dict(sorted(groups.items())), "jaccard": jaccard}


def ropo_criterion(config: RopoConfig, base: Criterion | None, decide: bool) -> Criterion:
    """A split criterion adding ROPO to `base` (CHES, or None): its loss per pair, the
    three-way report (margin, CHES, ROPO); decides when `decide`."""

    def criterion(model, pairs, pad_id, margins, margin_noisy) -> CriterionResult:
        result = (base(model, pairs, pad_id, margins, margin_noisy) if base is not None
                  else CriterionResult(margin_noisy, {}, {"criterion": "margin"}))
        losses = ropo_losses(margins.double(), config.beta, config.alpha)
        noisy = ches_noisy_mask(losses, config, int(margin_noisy.sum()))  # same top rules
        masks = {"margin": margin_noisy}
        if "ches_noisy" in result.columns:
            masks["ches"] = torch.tensor(result.columns["ches_noisy"])
        masks["ropo"] = noisy
        report = {**result.report, "three_way": {
            **agreement(masks), "spearman_margin_vs_ropo": spearman(margins.double(), losses)}}
        report["ropo"] = {"alpha": config.alpha, "beta": config.beta, "noisy": int(noisy.sum()),
                          "top_fraction": config.top_fraction, "threshold": config.threshold,
                          "quantiles": {str(q): float(losses.quantile(q)) for q in QUANTILES}}
        if decide:
            report["criterion"] = "ropo"
        columns = {**result.columns, "margin_noisy": margin_noisy.tolist(),
                   "ropo_loss": losses.tolist(), "ropo_noisy": noisy.tolist()}
        return CriterionResult(noisy if decide else result.noisy, columns, report)

    return criterion
