"""`compo eval`: did the alignment work? For a model and a preference set:
preference accuracy (log pi(y+) > log pi(y-)), likelihood displacement against a base
model, mean length of greedy generations, and optionally a judge win rate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from compo import fileio
from compo.config import DataConfig, ModelConfig
from compo.data.encoding import load_tokenized
from compo.eval.config import EvalConfig, GenerationConfig
from compo.model.loading import load_model, load_tokenizer
from compo.model.scoring import score_pairs

DISPLACEMENT_ROWS = {  # label -> which pairs it counts (c: log pi(y+), r: log pi(y-))
    "log pi(y+) fell": lambda dc, dr: dc < 0,
    "log pi(y-) rose": lambda dc, dr: dr > 0,
    "both: y+ fell and y- rose": lambda dc, dr: (dc < 0) & (dr > 0),
    "y+ and y- both fell": lambda dc, dr: (dc < 0) & (dr < 0),
    "y+ rose and y- fell (the goal)": lambda dc, dr: (dc > 0) & (dr < 0),
}


def preference_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs with log pi(y+) > log pi(y-)."""
    return float((chosen > rejected).double().mean())


def displacement(before: tuple[torch.Tensor, torch.Tensor],
                 after: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """How log-probs moved from a base model to the tuned one, pair by pair."""
    dc, dr = after[0] - before[0], after[1] - before[1]
    return {"pairs": dc.numel(),
            "counts": {label: int(rule(dc, dr).sum()) for label, rule in DISPLACEMENT_ROWS.items()},
            "mean_chosen_change": float(dc.mean()), "mean_rejected_change": float(dr.mean())}


def score_file(model: ModelConfig, data: DataConfig, tokenizer) -> tuple[torch.Tensor, ...]:
    """log pi(y+), log pi(y-) of every pair of `data` under `model`."""
    pairs, _ = load_tokenized(data, tokenizer)
    return score_pairs(load_model(model), pairs, tokenizer.pad_token_id, model.batch_size)


def distinct_prompts(data: DataConfig, tokenizer, limit: int | None) -> dict[str, list[int]]:
    """The first `limit` distinct prompts: key (prompt as JSON) -> prompt token ids."""
    prompts = {}
    for pair in load_tokenized(data, tokenizer)[0]:
        prompts.setdefault(json.dumps(pair.row["prompt"]), pair.prompt_ids)
    return dict(list(prompts.items())[:limit])


@torch.no_grad()
def greedy_responses(model, tokenizer, prompts: list[list[int]],
                     gen: GenerationConfig) -> list[list[int]]:
    """Greedy completions (token ids, up to and without EOS), left-padded batches."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), gen.batch_size):
        batch = prompts[start : start + gen.batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                            device=device)
        generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                   max_new_tokens=gen.max_new_tokens, pad_token_id=pad,
                                   eos_token_id=eos)[:, width:].tolist()
        out += [row[: row.index(eos)] if eos in row else row for row in generated]
    return out


def generations(model: ModelConfig, data: DataConfig, gen: GenerationConfig) -> dict:
    """Greedy responses of `model` to the distinct prompts, with their mean length."""
    tokenizer = load_tokenizer(model.path)
    prompts = distinct_prompts(data, tokenizer, gen.max_prompts)
    ids = greedy_responses(load_model(model), tokenizer, list(prompts.values()), gen)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    prompt_texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts.values()]
    return {"prompts": len(ids), "mean_tokens": sum(map(len, ids)) / max(1, len(ids)),
            "mean_chars": sum(map(len, texts)) / max(1, len(texts)),
            "hit_limit": sum(len(row) == gen.max_new_tokens for row in ids),
            "keys": list(prompts), "prompt_texts": prompt_texts, "texts": texts}


def judge_section(config: EvalConfig, mine: dict) -> dict:
    """Win rate of the model's responses against the reference model's, per prompt."""
    from compo.eval.winrate import judge_win_rate

    theirs = generations(config.judge.reference_model, config.data, config.generation)
    reference = dict(zip(theirs["keys"], theirs["texts"], strict=True))
    shared = [i for i, key in enumerate(mine["keys"]) if key in reference]
    return judge_win_rate([mine["prompt_texts"][i] for i in shared],
                          [mine["texts"][i] for i in shared],
                          [reference[mine["keys"][i]] for i in shared], config.judge)


def evaluate(config: EvalConfig) -> dict:
    """All measurements; writes report.json and report.md to config.output_dir."""
    config.check_paths()
    out = Path(config.output_dir)
    tokenizer = load_tokenizer(config.model.path)
    chosen, rejected = score_file(config.model, config.data, tokenizer)
    report = {"model": config.model.path, "data": config.data.path, "pairs": chosen.numel(),
              "preference_accuracy": preference_accuracy(chosen, rejected)}
    if config.base_model is not None:
        base = score_file(config.base_model, config.data, tokenizer)
        report.update(base_model=config.base_model.path,
                      base_accuracy=preference_accuracy(*base),
                      displacement=displacement(base, (chosen, rejected)))
    if config.generation.enabled or config.judge is not None:
        mine = generations(config.model, config.data, config.generation)
        report["generation"] = {k: mine[k] for k in ("prompts", "mean_tokens", "mean_chars",
                                                     "hit_limit")}
        report["generation"]["max_new_tokens"] = config.generation.max_new_tokens
        if config.base_model is not None:
            theirs = generations(config.base_model, config.data, config.generation)
            report["base_generation"] = {k: theirs[k] for k in ("mean_tokens", "mean_chars")}
        if config.judge is not None:
            report["judge"] = judge_section(config, mine)
    if config.run_dir is not None:
        from compo.eval.plots import plot_pipeline

        report["plots"] = [str(path) for path in plot_pipeline(Path(config.run_dir))]
    report["report"] = str(out / "report.md")
    fileio.write_json(out / "report.json", report)
    fileio.write_text(out / "report.md", markdown(report, out))
    return report


def markdown(report: dict, out: Path) -> str:
    """The human-readable report (plots linked relative to the report's folder)."""
    lines = [f"# Evaluation of {report['model']}", "",
             f"Preference set: {report['data']} ({report['pairs']} pairs)", "",
             "| model | preference accuracy |", "|---|---|",
             f"| evaluated | {report['preference_accuracy']:.1%} |"]
    if "base_accuracy" in report:
        lines.append(f"| base ({report['base_model']}) | {report['base_accuracy']:.1%} |")
        shift = report["displacement"]
        lines += ["", "## Likelihood displacement against the base model", "",
                  "| pairs whose ... | count | share |", "|---|---|---|"]
        lines += [f"| {label} | {count} | {count / shift['pairs']:.0%} |"
                  for label, count in shift["counts"].items()]
        lines += ["", f"Mean change of log pi(y+): {shift['mean_chosen_change']:+.3f}; "
                      f"of log pi(y-): {shift['mean_rejected_change']:+.3f}."]
    if "generation" in report:
        gen = report["generation"]
        lines += ["", "## Greedy generations", "",
                  f"{gen['prompts']} prompts, at most {gen['max_new_tokens']} new tokens: mean "
                  f"{gen['mean_tokens']:.1f} tokens ({gen['mean_chars']:.0f} characters); "
                  f"{gen['hit_limit']} hit the limit."]
        if "base_generation" in report:
            lines.append(f"Base model: mean {report['base_generation']['mean_tokens']:.1f} "
                         "tokens.")
    if "judge" in report:
        lines += judge_lines(report["judge"])
    if report.get("plots"):
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({os.path.relpath(p, out)})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def judge_lines(judge: dict) -> list[str]:
    """Markdown lines of the judge section."""
    def pct(value):
        return "n/a" if value is None else f"{value:.1%}"

    return ["", "## Judge win rate against the reference model", "",
            f"{judge['comparisons']} comparisons via {judge['url']}: {judge['wins']} wins, "
            f"{judge['losses']} losses, {judge['ties']} ties, {judge['abstained']} abstained.",
            f"Win rate {pct(judge['win_rate'])}; length-controlled "
            f"{pct(judge['length_controlled_win_rate'])} (mean length "
            f"{judge['mean_chars_model']:.0f} vs {judge['mean_chars_reference']:.0f} chars)."]
