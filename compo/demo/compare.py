"""`compo compare`: DPO on all pairs vs DPO_clean vs DPO_clean + ComPO, on the embedded
default (same tiny model, same pairs, same first-stage settings), in one command.

Measured against the start (SFT) model: likelihood displacement on the noisy pairs (the
reference model's split of the training pairs) and preference accuracy on held-out pairs
that no stage trains on; plus the mean length of greedy generations on held-out prompts.
"""

from __future__ import annotations

import time
from pathlib import Path

from compo import fileio
from compo.config import DataConfig, ModelConfig
from compo.config_files import deep_merge, parse_config
from compo.data.ches import OVERLAP_GROUPS
from compo.demo.embedded import EmbeddedData, embedded_pipeline, prepare_embedded
from compo.demo.run import DemoSettings
from compo.eval.config import GenerationConfig
from compo.eval.evaluate import displacement, generations, preference_accuracy, score_file
from compo.model.loading import load_tokenizer
from compo.pipeline.config import PipelineConfig
from compo.pipeline.stages import run_pipeline

COMPARE_GENERATION = GenerationConfig(max_new_tokens=24, max_prompts=60, batch_size=16)
NOISY_ROWS = ("log pi(y+) fell", "log pi(y-) rose", "both: y+ fell and y- rose")


def comparison_configs(data: EmbeddedData, workdir: Path,
                       overrides: dict | None = None) -> dict[str, PipelineConfig]:
    """Two pipelines: split + DPO_clean + ComPO, and DPO on all pairs (no split, no ComPO)."""
    two_stage = deep_merge(embedded_pipeline(data, workdir / "dpo_clean_compo"),
                           {"eval": None, **(overrides or {})})
    all_pairs = deep_merge(two_stage, {"output_dir": str(workdir / "dpo_all"),
                                       "split": {"skip": True}, "compo": {"skip": True}})
    return {name: parse_config(PipelineConfig, value, f"compo compare: {name}")
            for name, value in (("two_stage", two_stage), ("dpo_all", all_pairs))}


def measure(model: ModelConfig, noisy: DataConfig, heldout: DataConfig, tokenizer,
            start_scores: dict) -> dict:
    """One row of the table: displacement on the noisy pairs, held-out accuracy, length."""
    scores_noisy = score_file(model, noisy, tokenizer)
    scores_held = score_file(model, heldout, tokenizer)
    shift = displacement(start_scores["noisy"], scores_noisy)
    return {"model": model.path, "noisy_pairs": shift["pairs"], **shift["counts"],
            "mean_chosen_change": shift["mean_chosen_change"],
            "mean_rejected_change": shift["mean_rejected_change"],
            "noisy_accuracy": preference_accuracy(*scores_noisy),
            "heldout_pairs": scores_held[0].numel(),
            "heldout_accuracy": preference_accuracy(*scores_held),
            "mean_generation_tokens":
                generations(model, heldout, COMPARE_GENERATION)["mean_tokens"]}


def run_compare(workdir: str | Path, overrides: dict | None = None,
                progress: bool = True) -> dict:
    """Build the start model once, run both pipelines, measure four models, print a table."""
    started = time.perf_counter()
    workdir = Path(workdir)
    configs = comparison_configs(EmbeddedData.at(workdir), workdir, overrides)
    data = prepare_embedded(workdir, DemoSettings(seed=configs["two_stage"].seed))
    two_stage = run_pipeline(configs["two_stage"], progress)
    all_pairs = run_pipeline(configs["dpo_all"], progress)
    start = configs["two_stage"].model
    noisy = DataConfig(path=str(workdir / "dpo_clean_compo" / "split" / "noisy.jsonl"))
    heldout = DataConfig(path=str(data.heldout))
    tokenizer = load_tokenizer(start.path)
    start_scores = {"noisy": score_file(start, noisy, tokenizer)}
    models = {"SFT (start)": start.path,
              "DPO (all pairs)": all_pairs["first_stage"]["model"],
              "DPO_clean": two_stage["first_stage"]["model"],
              "DPO_clean + ComPO": two_stage["compo"]["model"]}
    rows = {name: measure(start.model_copy(update={"path": path}), noisy, heldout, tokenizer,
                          start_scores)
            for name, path in models.items()}
    criteria = criteria_table(workdir / "dpo_clean_compo" / "split", start,
                              start.model_copy(update={"path": models["DPO (all pairs)"]}),
                              tokenizer)
    result = {"workdir": str(workdir), "rows": rows, "criteria": criteria,
              "split": two_stage["split"], "compo": two_stage["compo"],
              "seconds": time.perf_counter() - started}
    fileio.write_json(workdir / "compare.json", result)
    table = markdown_table(rows) + "\n" + criteria_markdown(criteria)
    fileio.write_text(workdir / "compare.md", table)
    print(table)
    return result


def criteria_table(split_dir: Path, start: ModelConfig, dpo_all: ModelConfig,
                   tokenizer) -> dict[str, dict]:
    """Per split group (margin / CHES noisy or not): how DPO on all pairs moved log pi(y+)."""
    changes: dict[str, list[float]] = {label: [] for label in OVERLAP_GROUPS.values()}
    for name in ("noisy", "clean"):
        data = DataConfig(path=str(split_dir / f"{name}.jsonl"))
        before = score_file(start, data, tokenizer)[0]
        after = score_file(dpo_all, data, tokenizer)[0]
        rows = fileio.read_jsonl(data.path)
        for row, change in zip(rows, (after - before).tolist(), strict=True):
            changes[OVERLAP_GROUPS[(row["margin_noisy"], row["ches_noisy"])]].append(change)
    return {label: {"pairs": len(values), "chosen_fell": sum(v < 0 for v in values),
                    "mean_chosen_change": sum(values) / len(values) if values else None}
            for label, values in changes.items()}


def criteria_markdown(criteria: dict[str, dict]) -> str:
    """Which split criterion finds the pairs whose log pi(y+) DPO (all pairs) lowers."""
    lines = ["| split group (reference model) | pairs | DPO (all pairs): log pi(y+) fell | "
             "mean d log pi(y+) |", "|---|---|---|---|"]
    for label, group in criteria.items():
        if group["pairs"]:
            lines.append(f"| {label} | {group['pairs']} | {group['chosen_fell']} "
                         f"({group['chosen_fell'] / group['pairs']:.0%}) | "
                         f"{group['mean_chosen_change']:+.2f} |")
    return "\n".join(lines) + "\n"


def markdown_table(rows: dict[str, dict]) -> str:
    """The comparison as a markdown table."""
    first = next(iter(rows.values()))
    header = (f"| model | noisy pairs (of {first['noisy_pairs']}): y+ fell | y- rose | "
              "both | mean d log pi(y+) | mean d log pi(y-) | noisy accuracy | "
              f"held-out accuracy ({first['heldout_pairs']} pairs) | mean greedy tokens |")
    lines = [header, "|---" * 9 + "|"]
    for name, row in rows.items():
        counts = " | ".join(str(row[key]) for key in NOISY_ROWS)
        lines.append(f"| {name} | {counts} | {row['mean_chosen_change']:+.2f} | "
                     f"{row['mean_rejected_change']:+.2f} | {row['noisy_accuracy']:.1%} | "
                     f"{row['heldout_accuracy']:.1%} | {row['mean_generation_tokens']:.1f} |")
    return "\n".join(lines) + "\n"
