"""Split preference pairs into clean and noisy by the reference model's margin.

margin = log pi_ref(y+|x) - log pi_ref(y-|x). Noisy iff |margin| <= delta (paper), or
with rule 'reference' iff 0 < margin < delta (the public reference code's variant).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from compo import fileio
from compo.config import SplitConfig
from compo.data.encoding import load_tokenized
from compo.model.loading import load_model, load_tokenizer
from compo.model.scoring import score_pairs

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def noisy_mask(margins: torch.Tensor, delta: float, rule: str) -> torch.Tensor:
    """Which pairs are noisy under the rule."""
    if rule == "abs":
        return margins.abs() <= delta
    if rule == "reference":
        return (margins > 0) & (margins < delta)
    raise ValueError(f"unknown split rule {rule!r}; use abs or reference")


def margin_report(margins: torch.Tensor, noisy: torch.Tensor, bins: int) -> dict:
    """Counts, quantiles and a histogram of the margins."""
    values = margins.double()
    counts = torch.histc(values, bins=bins, min=float(values.min()), max=float(values.max()))
    edges = torch.linspace(float(values.min()), float(values.max()), bins + 1)
    return {
        "pairs": values.numel(), "noisy": int(noisy.sum()), "clean": int((~noisy).sum()),
        "margin_quantiles": {str(q): float(values.quantile(q)) for q in QUANTILES},
        "margin_mean": float(values.mean()),
        "histogram": {"edges": edges.tolist(), "counts": [int(c) for c in counts]},
    }


class CriterionResult(NamedTuple):
    """What an extra split criterion decides: the noisy mask, per-pair values, a report."""

    noisy: torch.Tensor  # [K] bool, replaces the margin's decision
    columns: dict[str, list[float]]  # written into every row of clean/noisy.jsonl
    report: dict  # merged into report.json


# (model, tokenized pairs, pad id, margins [K], margin's noisy mask [K]) -> decision
Criterion = Callable[..., CriterionResult]


def split(config: SplitConfig, criterion: Criterion | None = None) -> dict:
    """Score every pair with the reference model; write clean/noisy JSONL and a report.

    `criterion` (optional) sees the loaded model and the margins and may decide instead.
    """
    tokenizer = load_tokenizer(config.model.path)
    model = load_model(config.model)
    pairs, load_report = load_tokenized(config.data, tokenizer)
    chosen, rejected = score_pairs(model, pairs, tokenizer.pad_token_id,
                                   config.model.batch_size)
    margins = chosen - rejected
    noisy = noisy_mask(margins, config.delta, config.rule)
    report = {"delta": config.delta, "rule": config.rule, "data": config.data.path,
              "model": config.model.path, "load": load_report.as_dict(),
              **margin_report(margins, noisy, config.histogram_bins)}
    columns = {}
    if criterion is not None:
        noisy, columns, extra = criterion(model, pairs, tokenizer.pad_token_id, margins, noisy)
        report.update(extra, noisy=int(noisy.sum()), clean=int((~noisy).sum()))
    out = Path(config.output_dir)
    for name, keep in (("noisy", noisy), ("clean", ~noisy)):
        rows = [dict(pair.row, margin=float(margins[i]), source=pair.source,
                     **{key: values[i] for key, values in columns.items()})
                for i, pair in enumerate(pairs) if keep[i]]
        fileio.write_jsonl(out / f"{name}.jsonl", rows)
    fileio.write_json(out / "report.json", report)
    return report
