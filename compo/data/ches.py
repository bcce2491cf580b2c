"""CHES split criterion (Razin et al. 2024, "Unintentional unalignment: likelihood
displacement in direct preference optimization").

With h+ and h- the last-layer hidden embeddings at the positions that predict the tokens
of y+ and y- (what the output layer sees, as in compo.model.scoring), S+ = sum h+, S- = sum h-:
    CHES = <S+, S-> - ||S+||^2
length-normalized (ln-CHES): the same with the means S+/|y+|, S-/|y-|. A high score means
the two responses look alike to the model: the pairs whose likelihoods DPO displaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, model_validator
from torch import nn

from compo.config import StrictModel
from compo.data.formats import TokenizedPair
from compo.data.split import CriterionResult, margin_report
from compo.model.scoring import head_inputs, pair_sequences

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
# (noisy by margin, noisy by CHES) -> name of the group
OVERLAP_GROUPS = {(True, True): "both noisy", (True, False): "margin only",
                  (False, True): "CHES only", (False, False): "neither (clean)"}


class ChesConfig(StrictModel):
    """CHES score (Razin et al. 2024): a high score predicts that a direct method will
    lower log pi(y+) on the pair (likelihood displacement)."""

    enabled: bool = Field(True, description="compute CHES next to the margin (the report "
                          "shows how the two criteria overlap)")
    length_normalized: bool = Field(
        True, description="average the hidden embeddings over tokens (ln-CHES) instead of "
        "summing them; the sum favours long responses")
    top_fraction: float | None = Field(
        None, gt=0, le=1, description="noisy = this fraction of pairs with the highest CHES")
    threshold: float | None = Field(None, description="noisy = CHES >= threshold")

    @model_validator(mode="after")
    def _one_rule(self) -> ChesConfig:
        if self.top_fraction is not None and self.threshold is not None:
            raise ValueError("set either ches.top_fraction or ches.threshold, not both "
                             "(neither: as many pairs as the margin marks noisy)")
        return self


def response_embeddings(model: nn.Module, pairs: Sequence[TokenizedPair], pad_id: int,
                        batch_size: int, length_normalized: bool) -> torch.Tensor:
    """Summed (or averaged) hidden embeddings per response: [K, 2, d] float64."""
    out = []
    pairs_per_batch = max(1, batch_size // 2)
    for start in range(0, len(pairs), pairs_per_batch):
        inputs = head_inputs(model, pair_sequences(pairs[start : start + pairs_per_batch]),
                             pad_id, batch_size)
        hidden = inputs.hidden.double()
        sums = hidden.new_zeros(inputs.num_sequences, hidden.shape[1])
        sums.index_add_(0, inputs.segment, hidden)
        if length_normalized:
            counts = torch.bincount(inputs.segment, minlength=inputs.num_sequences)
            sums = sums / counts.unsqueeze(1).to(sums)
        out.append(sums.view(-1, 2, hidden.shape[1]).cpu())
    return torch.cat(out)


def ches_from_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """CHES [K] from per-response embeddings [K, 2, d] (chosen first)."""
    chosen, rejected = embeddings[:, 0], embeddings[:, 1]
    return (chosen * rejected).sum(-1) - (chosen * chosen).sum(-1)


def ches_scores(model: nn.Module, pairs: Sequence[TokenizedPair], pad_id: int,
                batch_size: int = 8, length_normalized: bool = True) -> torch.Tensor:
    """CHES score of every pair [K] under `model` (one body pass per response)."""
    return ches_from_embeddings(
        response_embeddings(model, pairs, pad_id, batch_size, length_normalized))


def ches_noisy_mask(scores: torch.Tensor, config: ChesConfig, default_count: int) -> torch.Tensor:
    """Noisy = highest CHES: above the threshold, the top fraction, or the top N."""
    if config.threshold is not None:
        return scores >= config.threshold
    count = (round(config.top_fraction * scores.numel()) if config.top_fraction is not None
             else default_count)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[scores.argsort(descending=True)[:count]] = True
    return mask


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..K-1 (ties broken by position), as float64."""
    out = torch.empty(values.numel(), dtype=torch.float64)
    out[values.argsort()] = torch.arange(values.numel(), dtype=torch.float64)
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float(ra @ rb) / denominator if denominator > 0 else 0.0


def overlap_report(margin_noisy: torch.Tensor, ches_noisy: torch.Tensor,
                   margins: torch.Tensor, scores: torch.Tensor) -> dict:
    """How the margin and CHES criteria agree: counts, Jaccard, rank correlation."""
    both = int((margin_noisy & ches_noisy).sum())
    union = int((margin_noisy | ches_noisy).sum())
    return {
        "margin_noisy": int(margin_noisy.sum()), "ches_noisy": int(ches_noisy.sum()),
        "both_noisy": both, "margin_only": int((margin_noisy & ~ches_noisy).sum()),
        "ches_only": int((ches_noisy & ~margin_noisy).sum()),
        "neither": int((~margin_noisy & ~ches_noisy).sum()),
        "jaccard": both / union if union else 1.0,
        # expected negative: a small |margin| goes with a high CHES
        "spearman_abs_margin_vs_ches": spearman(margins.abs().double(), scores.double()),
    }


def ches_report(scores: torch.Tensor, noisy: torch.Tensor, config: ChesConfig,
                bins: int) -> dict:
    """Summary of the CHES scores, in the margin report's format."""
    summary = margin_report(scores, noisy, bins)
    return {"length_normalized": config.length_normalized, "threshold": config.threshold,
            "top_fraction": config.top_fraction, "noisy": summary["noisy"],
            "quantiles": {str(q): float(scores.double().quantile(q)) for q in QUANTILES},
            "mean": summary["margin_mean"], "histogram": summary["histogram"]}


def ches_criterion(config: ChesConfig, decide: bool, batch_size: int, bins: int):
    """A split criterion (compo.data.split.Criterion): adds CHES; decides when `decide`."""

    def criterion(model, pairs, pad_id, margins, margin_noisy) -> CriterionResult:
        scores = ches_scores(model, pairs, pad_id, batch_size, config.length_normalized)
        noisy = ches_noisy_mask(scores, config, int(margin_noisy.sum()))
        report = {"criterion": "ches" if decide else "margin",
                  "ches": ches_report(scores, noisy, config, bins),
                  "overlap": overlap_report(margin_noisy, noisy, margins, scores)}
        flags = noisy.tolist()
        columns = {"ches": scores.tolist(), "ches_noisy": flags,
                   "margin_noisy": margin_noisy.tolist()}
        return CriterionResult(noisy if decide else margin_noisy, columns, report)

    return criterion
