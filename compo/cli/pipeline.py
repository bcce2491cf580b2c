"""Subcommands `pipeline`, `eval`, `compare` and `plot` (registered by compo.cli.main)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from compo.config_files import deep_merge, load_config, parse_config
from compo.errors import ConfigError
from compo.eval.config import EvalConfig
from compo.pipeline.config import PipelineConfig


def parse_sets(items: list[str]) -> dict:
    """--set a.b.c=VALUE options as a nested mapping (values are read as YAML)."""
    merged: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. "
                              "--set compo.train.max_iterations=10")
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {part} is already set to a value")
        node[leaf] = yaml.safe_load(value)
    return merged


def interrupted(command: str) -> int:
    print(f"\ninterrupted; finished stages are kept. Run the same command again to resume: "
          f"{command}", file=sys.stderr)
    return 130


def cmd_pipeline(args) -> int:
    from compo.pipeline.stages import run_pipeline

    overrides = parse_sets(args.set)
    if args.config:
        config = load_config(PipelineConfig, args.config, overrides)
    else:
        from compo.demo.embedded import EmbeddedData, embedded_pipeline, prepare_embedded
        from compo.demo.run import DemoSettings

        defaults = embedded_pipeline(EmbeddedData.at(args.workdir), Path(args.workdir) / "run")
        config = parse_config(PipelineConfig, deep_merge(defaults, overrides),
                              "embedded default (--set)")
        prepare_embedded(args.workdir, DemoSettings(seed=config.seed))
    try:
        summary = run_pipeline(config, progress=not args.no_progress)
    except KeyboardInterrupt:
        return interrupted("compo " + " ".join(sys.argv[1:]))
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    """What the pipeline did, in a few lines."""
    if "split" in summary:
        split = summary["split"]
        print(f"split: {split['noisy']} noisy, {split['clean']} clean of {split['pairs']} pairs"
              + (f"; overlap with CHES: {json.dumps(split['overlap'])}"
                 if "overlap" in split else ""))
    if "first_stage" in summary:
        first = summary["first_stage"]
        print(f"first stage ({first['trainer']}): {first['steps']} steps on {first['pairs']} "
              f"pairs -> {first['model']}")
    if "compo" in summary:
        compo = summary["compo"]
        print(f"ComPO: {compo['accepted']}/{compo['iterations']} iterations accepted on "
              f"{compo['pairs']} pairs -> {compo['model']}")
    print(f"final model: {summary['final_model']}")
    for path in summary.get("plots", []):
        print(f"plot: {path}")
    if "eval" in summary:
        print(f"evaluation: {summary['eval']['report']}")
    print(f"summary: {summary['output_dir']}/summary.json")


def eval_overrides(args) -> dict:
    """The flags of `compo eval` as config keys (only those given)."""
    flags = {"model": {"path": args.model} if args.model else None,
             "data": {"path": args.data} if args.data else None,
             "base_model": {"path": args.base} if args.base else None,
             "run_dir": args.run_dir, "output_dir": args.out}
    overrides = {key: value for key, value in flags.items() if value is not None}
    generation = {"enabled": False} if args.no_generation else {}
    if args.max_new_tokens:
        generation["max_new_tokens"] = args.max_new_tokens
    if generation:
        overrides["generation"] = generation
    return overrides


def cmd_eval(args) -> int:
    from compo.eval.evaluate import evaluate

    overrides = eval_overrides(args)
    config = (load_config(EvalConfig, args.config, overrides) if args.config
              else parse_config(EvalConfig, overrides, "compo eval arguments"))
    report = evaluate(config)
    print(f"preference accuracy: {report['preference_accuracy']:.1%} on {report['pairs']} pairs"
          + (f" (base: {report['base_accuracy']:.1%})" if "base_accuracy" in report else ""))
    print(f"report: {report['report']}")
    return 0


def cmd_compare(args) -> int:
    from compo.demo.compare import run_compare

    try:
        run_compare(args.workdir, parse_sets(args.set), progress=not args.no_progress)
    except KeyboardInterrupt:
        return interrupted("compo " + " ".join(sys.argv[1:]))
    print(f"wrote {args.workdir}/compare.md and compare.json")
    return 0


def cmd_plot(args) -> int:
    from compo.eval.plots import plot_pipeline

    paths = plot_pipeline(args.run_dir)
    if not paths:
        raise ConfigError(f"{args.run_dir}: nothing to plot (no split/, first_stage/ or "
                          "metrics.jsonl there)")
    for path in paths:
        print(f"wrote {path}")
    return 0


def add_pipeline_commands(sub) -> None:
    """Register pipeline, eval, compare and plot on compo's subparsers."""
    pipe = sub.add_parser("pipeline", help="split -> first stage (TRL) -> ComPO -> export",
                          description="Without --config: the embedded default (tiny model, "
                          "demo pairs) in --workdir.")
    pipe.add_argument("--config", help="pipeline YAML (see compo.pipeline.config)")
    pipe.add_argument("--workdir", default="runs/pipeline-demo",
                      help="embedded default only: where model, data and run go")
    pipe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. compo.train.max_iterations=10")
    pipe.add_argument("--no-progress", action="store_true", help="no progress bars")
    pipe.set_defaults(func=cmd_pipeline)

    ev = sub.add_parser("eval", help="preference accuracy, displacement, lengths, win rate")
    ev.add_argument("--config", help="eval YAML (see EvalConfig); flags override it")
    ev.add_argument("--model", help="model directory to evaluate")
    ev.add_argument("--data", help="preference pairs (JSONL or saved dataset)")
    ev.add_argument("--base", help="base model directory for the displacement table")
    ev.add_argument("--run-dir", help="pipeline or ComPO run directory whose plots to link")
    ev.add_argument("--out", help="report directory (default: eval)")
    ev.add_argument("--max-new-tokens", type=int, help="greedy generation length limit")
    ev.add_argument("--no-generation", action="store_true", help="skip greedy generations")
    ev.set_defaults(func=cmd_eval)

    cmp = sub.add_parser("compare", help="DPO vs DPO_clean vs DPO_clean + ComPO (embedded)")
    cmp.add_argument("--workdir", default="runs/compare", help="where everything is written")
    cmp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key of both pipelines' config")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")
    cmp.set_defaults(func=cmd_compare)

    plot = sub.add_parser("plot", help="PNG plots of a pipeline or ComPO run directory")
    plot.add_argument("run_dir", type=Path, help="pipeline output or ComPO run directory")
    plot.set_defaults(func=cmd_plot)

