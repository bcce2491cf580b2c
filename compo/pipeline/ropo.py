"""ROPO as a first-stage trainer: TRL's DPOTrainer with ROPO's loss (compo/data/ropo.py).

A documented subclass: TRL 1.x computes its DPO losses inline in `_compute_loss`, with no
hook for another loss, so `RopoTrainer.compute_loss` makes the sums of completion-token
log-probs itself from TRL's own batch (`input_ids`, `attention_mask`, `completion_mask`:
the tokens TRL trains on), for the policy and the frozen reference, and returns the ROPO
loss of the reward margins. Everything else (data, collation, optimiser, checkpoints,
resume) is DPOTrainer's. TRL options that change DPO's loss are refused up front
(compo.pipeline.first_stage), never silently ignored. This module imports TRL.
"""

from __future__ import annotations

import torch
from trl import DPOConfig, DPOTrainer

from compo.data.ropo import ropo_losses

__all__ = ["DPOConfig", "RopoTrainer", "completion_logps"]


def completion_logps(model, inputs: dict) -> torch.Tensor:
    """Sum of log pi(token) over each sequence's completion tokens [2B] (chosen, rejected)."""
    ids = inputs["input_ids"]
    logits = model(input_ids=ids, attention_mask=inputs["attention_mask"],
                   use_cache=False).logits[:, :-1].float()  # position t predicts token t + 1
    token = logits.log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token * inputs["completion_mask"][:, 1:]).sum(1)


class RopoTrainer(DPOTrainer):
    """DPOTrainer whose loss is ROPO's, with trade-off `alpha` (TRL's `beta` is ROPO's)."""

    def __init__(self, *args, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.ropo_alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = completion_logps(model, inputs).chunk(2)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            with torch.no_grad():
                ref_chosen, ref_rejected = completion_logps(self.ref_model, inputs).chunk(2)
        margins = (chosen - ref_chosen) - (rejected - ref_rejected)
        loss = ropo_losses(margins, self.beta, self.ropo_alpha).mean()
        rewards = self.beta * margins.detach()
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["rewards/margins"].append(rewards.mean().item())
        metrics["rewards/accuracies"].append((rewards > 0).float().mean().item())
        return (loss, {"margins": rewards}) if return_outputs else loss
