"""`compo plan`: what a run needs per role (memory, bytes, seconds) before GPUs are rented."""

from __future__ import annotations

import argparse
import json

from compo.plan.hardware import GPUS


def cmd_plan(args) -> int:
    from compo.config import TrainConfig
    from compo.config_files import load_config
    from compo.plan.estimate import make_plan, parse_options
    from compo.plan.report import plan_lines

    config = load_config(TrainConfig, args.config)
    options = parse_options({
        "model": args.model or config.model.path, "workers": args.workers, "gpu": args.gpu,
        "gpu_memory_gib": args.gpu_memory_gib, "tokens": args.tokens,
        "gpus_per_body": args.gpus_per_body, "gpus_per_worker": args.gpus_per_worker,
        "host_memory_gib": args.host_memory_gib, "network_gbit_s": args.network_gbit_s})
    plan = make_plan(config, options)
    print("\n".join(plan_lines(plan)))
    if args.json:
        print(json.dumps(plan))
    return 0 if plan["fits"] else 1


def add_plan_command(sub) -> None:
    """Register `compo plan` on the CLI's subparsers."""
    plan = sub.add_parser(
        "plan", help="per role memory, bytes and seconds per iteration, before renting GPUs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Reads the model's config.json only (no weights) and the run config; "
        "prints per role (coordinator, body and head workers for the likelihood oracle, "
        "generation workers for the service oracle) the memory per GPU, the bytes per "
        "iteration, an estimate of seconds per iteration, and whether it fits. Exit 1 when "
        "it does not.")
    plan.add_argument("--config", required=True, help="the run YAML (see TrainConfig)")
    plan.add_argument("--model", help="a model directory or a known name (mistral-7b, "
                      "llama-3-8b, gemma-2-9b, llama-3-70b); default: the config's model.path")
    plan.add_argument("--workers", type=int, required=True,
                      help="head workers (likelihood) or generation workers (service)")
    plan.add_argument("--gpu", choices=sorted(GPUS), default="H100",
                      help="GPU kind: its peak rates for the estimate")
    plan.add_argument("--gpu-memory-gib", type=float, help="memory of one GPU (default: the "
                      "GPU kind's)")
    plan.add_argument("--tokens", type=int, help="N, completion tokens per iteration "
                      "(default: batch_size x 2 x data.max_completion_tokens)")
    plan.add_argument("--gpus-per-body", type=int, help="GPUs the body is sharded over "
                      "(default: ray.gpus_per_body, else the fewest that fit)")
    plan.add_argument("--gpus-per-worker", type=int, help="GPUs per generation worker "
                      "(default: ray.gpus_per_worker if >= 1, else the fewest that fit)")
    plan.add_argument("--host-memory-gib", type=float, default=64.0,
                      help="memory of the coordinator's machine")
    plan.add_argument("--network-gbit-s", type=float, default=25.0,
                      help="the coordinator's network link")
    plan.add_argument("--json", action="store_true", help="also one JSON object, last line")
    plan.set_defaults(func=cmd_plan)
