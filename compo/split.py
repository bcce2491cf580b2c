"""Split preference pairs into clean and noisy by the reference model's margin.

margin = log pi_ref(y+|x) - log pi_ref(y-|x). Noisy iff |margin| <= delta (paper), or
with rule 'reference' iff 0 < margin < delta (the public reference code's variant).
"""

from __future__ import annotations

from pathlib import Path

import torch

from compo import fileio
from compo.config import SplitConfig
from compo.encoding import load_tokenized
from compo.modeling import load_model, load_tokenizer
from compo.scoring import score_pairs

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


def split(config: SplitConfig) -> dict:
    """Score every pair with the reference model; write clean/noisy JSONL and a report."""
    tokenizer = load_tokenizer(config.model.path)
    model = load_model(config.model)
    pairs, load_report = load_tokenized(config.data, tokenizer)
    chosen, rejected = score_pairs(model, pairs, tokenizer.pad_token_id,
                                   config.model.batch_size)
    margins = chosen - rejected
    noisy = noisy_mask(margins, config.delta, config.rule)
    out = Path(config.output_dir)
    for name, keep in (("noisy", noisy), ("clean", ~noisy)):
        rows = [dict(pair.row, margin=float(margin), source=pair.source)
                for pair, margin, flag in zip(pairs, margins, keep, strict=True) if flag]
        fileio.write_jsonl(out / f"{name}.jsonl", rows)
    report = {"delta": config.delta, "rule": config.rule, "data": config.data.path,
              "model": config.model.path, "load": load_report.as_dict(),
              **margin_report(margins, noisy, config.histogram_bins)}
    fileio.write_json(out / "report.json", report)
    return report
