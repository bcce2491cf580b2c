"""Evidence on the embedded default for moved MLPs, the reference code's trial-step check
and ROPO.

One command, three tables (issue #13, 4(a), 4(b) and 4(c)):
  (a) ComPO from DPO_clean on the noisy pairs moving the output layer only vs the output
      layer and the MLPs of the last 2 layers (the paper's Table 5): accepted iterations,
      y+ up / y- down counts as in (b), seconds per iteration.
  (b) ComPO from DPO_clean on the noisy pairs, without and with `accept_check: trial_step`
      (the reference's trial step of -5 g_clip): accepted iterations, refusals, and how many
      trained pairs' log pi(y+) went up / log pi(y-) went down (final/ vs ComPO's start).
  (c) DPO_clean vs ROPO_clean as the first stage (same clean pairs, beta, learning rate),
      then ComPO on the same noisy pairs: the first stage's displacement of the noisy pairs
      (vs the SFT start) and ComPO's counts as in (b).
The embedded default: the demo's tiny Llama fitted on 80% of the shipped pairs, split by the
margin (|margin| <= 3), the demo's ComPO settings (compo/demo). Finished stages are reused
on a re-run in the same --workdir. Writes parity.json and parity.md there.

  python bench/reference_parity.py [--workdir runs/reference-parity]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compo import fileio
from compo.config import DataConfig, ModelConfig
from compo.config_files import deep_merge, parse_config
from compo.demo.embedded import EmbeddedData, embedded_pipeline, prepare_embedded
from compo.demo.run import DemoSettings, compare
from compo.eval.evaluate import displacement, score_file
from compo.model.loading import load_tokenizer
from compo.pipeline.config import PipelineConfig
from compo.pipeline.stages import run_pipeline

COUNTS = ("chosen_up", "rejected_down", "both")


def pipelines(data: EmbeddedData, workdir: Path) -> dict[str, PipelineConfig]:
    """DPO_clean + ComPO, the same with the trial-step check, ROPO_clean + ComPO."""
    base = deep_merge(embedded_pipeline(data, workdir / "dpo_clean"),
                      {"eval": None, "plots": False})
    shared = {"split": {"skip": True, "from_dir": str(workdir / "dpo_clean" / "split")}}
    trial = deep_merge(base, {**shared, "output_dir": str(workdir / "dpo_clean_trial"),
                              "first_stage": {"skip": True, "checkpoint": str(
                                  workdir / "dpo_clean" / "first_stage" / "model")},
                              "compo": {"train": {"compo": {"accept_check": "trial_step"}}}})
    moved = deep_merge(trial, {"output_dir": str(workdir / "dpo_clean_moved"), "compo": {
        "train": {"compo": {"accept_check": "none", "perturb": {"mlp_last_layers": 2}}}}})
    ropo = deep_merge(base, {**shared, "output_dir": str(workdir / "ropo_clean"),
                             "first_stage": {"trainer": "ropo"}})
    return {name: parse_config(PipelineConfig, value, f"reference_parity: {name}")
            for name, value in (("dpo_clean", base), ("dpo_clean_trial", trial),
                                ("dpo_clean_moved", moved), ("ropo_clean", ropo))}


def compo_row(summary: dict, start: str, noisy: Path) -> dict:
    """Accepted iterations, trial refusals, and the trained pairs' moves under ComPO."""
    run_dir = Path(summary["compo"]["run_dir"])
    rows = fileio.read_jsonl(run_dir / "metrics.jsonl")
    moved = compare(run_dir, Path(start), noisy)
    return {"iterations": len(rows), "accepted": sum(row["accepted"] for row in rows),
            "seconds_per_iteration": sum(row["seconds"] for row in rows) / max(1, len(rows)),
            "trial_refused": sum(row.get("trial_check") == "refused" for row in rows),
            "pairs": moved["pairs"], **{key: moved[key] for key in COUNTS},
            "mean_chosen_change": moved["mean_chosen_change"],
            "mean_rejected_change": moved["mean_rejected_change"]}


def markdown(result: dict) -> str:
    """Tables (a), (b) and (c)."""
    a = ["| ComPO from DPO_clean moves | accepted / iterations | y+ up | y- down | both | "
         "mean d log pi(y+) | mean d log pi(y-) | s / iteration |", "|---" * 8 + "|"]
    for name, label in (("dpo_clean", "the output layer (default)"),
                        ("dpo_clean_moved", "output layer + MLPs of the last 2 layers")):
        row = result["compo"][name]
        a.append(f"| {label} | {row['accepted']} / {row['iterations']} | " + " | ".join(
            f"{row[key]} / {row['pairs']}" for key in COUNTS)
            + f" | {row['mean_chosen_change']:+.3f} | {row['mean_rejected_change']:+.3f} | "
            f"{row['seconds_per_iteration']:.2f} |")
    b = ["| ComPO from DPO_clean | accepted / iterations | refused by the trial step | "
         "y+ up | y- down | both | mean d log pi(y+) | mean d log pi(y-) |", "|---" * 8 + "|"]
    for name, label in (("dpo_clean", "no check (the paper)"),
                        ("dpo_clean_trial", "accept_check: trial_step (scale 5)")):
        row = result["compo"][name]
        b.append(f"| {label} | {row['accepted']} / {row['iterations']} | "
                 f"{row['trial_refused']} | " + " | ".join(
                     f"{row[key]} / {row['pairs']}" for key in COUNTS)
                 + f" | {row['mean_chosen_change']:+.3f} | {row['mean_rejected_change']:+.3f} |")
    c = ["| first stage | noisy pairs: y+ fell (vs SFT) | y- rose | then ComPO: accepted / "
         "iterations | y+ up | y- down | both |", "|---" * 7 + "|"]
    for name, label in (("dpo_clean", "DPO_clean"), ("ropo_clean", "ROPO_clean")):
        first, row = result["first_stage"][name], result["compo"][name]
        c.append(f"| {label} | {first['log pi(y+) fell']} / {first['pairs']} | "
                 f"{first['log pi(y-) rose']} / {first['pairs']} | {row['accepted']} / "
                 f"{row['iterations']} | " + " | ".join(
                     f"{row[key]} / {row['pairs']}" for key in COUNTS) + " |")
    return "\n\n".join("\n".join(table) for table in (a, b, c)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/reference-parity")
    args = parser.parse_args()
    started, workdir = time.perf_counter(), Path(args.workdir)
    configs = pipelines(EmbeddedData.at(workdir), workdir)
    prepare_embedded(workdir, DemoSettings(seed=configs["dpo_clean"].seed))
    summaries = {name: run_pipeline(config, progress=False) for name, config in configs.items()}
    noisy = workdir / "dpo_clean" / "split" / "noisy.jsonl"
    sft = configs["dpo_clean"].model
    tokenizer = load_tokenizer(sft.path)
    start_scores = score_file(sft, DataConfig(path=str(noisy)), tokenizer)
    result = {"compo": {}, "first_stage": {}, "split": summaries["dpo_clean"]["split"]}
    for name, summary in summaries.items():
        start = (summary["first_stage"]["model"] if "first_stage" in summary
                 else configs[name].first_stage.checkpoint)
        result["compo"][name] = compo_row(summary, start, noisy)
        if "first_stage" in summary:
            scores = score_file(ModelConfig(path=start), DataConfig(path=str(noisy)), tokenizer)
            shift = displacement(start_scores, scores)
            result["first_stage"][name] = {"pairs": shift["pairs"], **shift["counts"]}
    result["seconds"] = time.perf_counter() - started
    table = markdown(result)
    fileio.write_json(workdir / "parity.json", result)
    fileio.write_text(workdir / "parity.md", table)
    print(table)
    print(json.dumps({"seconds": round(result["seconds"]), "workdir": str(workdir)}))


if __name__ == "__main__":
    main()
