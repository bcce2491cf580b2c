"""The `compo` command line: demo, split, train, probe, apply-delta, conformance, plan, the
pipeline's commands (compo/cli/pipeline.py), and the service's (serve, reward-model:
compo/plugins.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from compo import plugins
from compo.cli.errors import explain, is_ray_refusal, ray_refusal
from compo.cli.pipeline import add_pipeline_commands
from compo.cli.plan import add_plan_command
from compo.config import SplitConfig, TrainConfig, in_process_options
from compo.config_files import load_config
from compo.errors import ConfigError

CONFORMANCE_HEADER = """# Conformance: does ComPO reproduce each model family exactly?

Made by `compo conformance --perturbations 50 --out docs/conformance.md`: every causal-LM
type the installed transformers ships (AutoModelForCausalLM's mapping, not a fixed list),
each built as a tiny random float32 model from its config class (hidden 64, 2 layers or
one of each layer kind, vocabulary 128, compo/demo/families.py) with every multiplier,
scaling and soft-cap field of its config set to a random value, every bias flag on and
every bias random; r = 5e-4. Each type is **exact** (the figures below), **refused** at
load time with the reason (compo/model/head.py: its logits differ in a right-padded batch
from each sequence alone, depend on later tokens, are cut to fewer rows than its output
layer, or are not what ComPO reproduces, naming the config fields), **not buildable** as a
tiny model (its config or model cannot be built, or it fails on one plain sequence: the
error), or **unverified** (it passes the load-time check but its float64 copy, the
reference for the perturbed changes, does not run). Silently wrong (WRONG) and failed rows
would be bugs. Base error: the largest difference between ComPO's log pi(y|x), scored in
one right-padded batch of 6 sequences, and the one from the model's own logits on each
sequence alone, in nats (exact: at most 1e-4). Perturbed error: the largest relative error
of ComPO's log-prob change against a float64 full forward pass with W + r z (exact: at
most 1e-3; where a family's forward casts its logits to float32, as Mamba's and xLSTM's
do, the reference applies its verified head in float64 to its output layer's input). Votes
agree: perturbations whose vote equals the float64 one (exact: all). The last columns, two
per target of compo/model/targets/ that moves weights inside the layers: the same with that
target moving in the last 2 layers too (e.g. compo.perturb: {target: mlp, last_layers: 2},
the paper's Table 5; families whose layers ComPO cannot rerun that way are refused there
with the reason), then two for rank-4 low-rank directions of the output layer
(compo.directions: {kind: low_rank, rank: 4}). Check your own checkpoint with
`compo conformance --model PATH`.

"""


def cmd_demo(args) -> int:
    from compo.demo.run import DemoSettings, run_demo

    run_demo(DemoSettings(workdir=args.workdir, seed=args.seed))
    return 0


def cmd_split(args) -> int:
    import json

    from compo.data.split import split

    config = load_config(SplitConfig, args.config)
    report = split(config)
    print(json.dumps({k: report[k] for k in ("pairs", "noisy", "clean")}))
    print(f"wrote {config.output_dir}/clean.jsonl, noisy.jsonl, report.json")
    return 0


def check_ray_options(config: TrainConfig, ray_address: str | None) -> None:
    """--ray-address with options that need the model here: refused before anything starts."""
    if (ray_address or config.ray is not None) and in_process_options(config):
        raise ConfigError(f"{', '.join(in_process_options(config))}: not supported on Ray; "
                          "remove them or run without --ray-address")


def cmd_train(args) -> int:
    from compo.cli.checks import check_start, resumable
    from compo.summary import summary_lines
    from compo.train import export_run, start_run

    if args.resume:
        run_dir = resumable(args.resume)
        where = str(run_dir.config_path)
        config = load_config(TrainConfig, run_dir.config_path)
    elif args.config:
        where, config = args.config, load_config(TrainConfig, args.config)
        if args.run_id:
            config = config.model_copy(update={"run_id": args.run_id})
    else:
        raise ConfigError("compo train needs --config FILE (new run) or --resume RUN_DIR")
    check_ray_options(config, args.ray_address)
    check_start(config, where, args.ray_address)  # seconds, before any directory or model
    run_dir = run_dir if args.resume else start_run(config)
    try:
        trainer = new_trainer(config, run_dir, args)
    except BaseException:
        if not args.resume:
            run_dir.discard_unstarted()  # a failed start leaves no empty run directory
        raise
    try:
        weight = trainer.run(progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the run is saved. Continue with: compo train --resume "
              f"{run_dir.path}", file=sys.stderr)
        return 130
    finally:
        trainer.close()
    summary = export_run(trainer, weight)
    print(f"run finished: {run_dir.path} (final/, delta.safetensors: {summary['entries']} "
          f"entries, {summary['fraction']:.2%} of the output layer)")
    print("\n".join(summary_lines(run_dir.metrics(), summary["export"], trainer.source_lines)))
    return 0


def new_trainer(config: TrainConfig, run_dir, args):
    """The run's trainer: votes in this process, or on Ray (a refused connection: one line)."""
    from compo.train import ComPOTrainer

    if not (args.ray_address or config.ray is not None):
        return ComPOTrainer(config, run_dir)
    ray_trainer = plugins.resolve(plugins.PLACEMENTS["ray"])  # workers/: the ray extra
    try:
        return ray_trainer(config, run_dir, args.ray_address, not args.no_progress)
    except Exception as error:
        if not is_ray_refusal(error):
            raise
        raise ray_refusal(error, args.ray_address or (config.ray and config.ray.address)) \
            from error


def cmd_probe(args) -> int:
    from compo.cli.checks import check_start
    from compo.data.encoding import load_tokenized
    from compo.model.head import output_layer
    from compo.model.loading import load_model, load_tokenizer
    from compo.oracles import oracle_kind
    from compo.service_oracle import probe
    from compo.service_oracle.cost import cost_lines, run_estimate

    config = load_config(TrainConfig, args.config)
    if not oracle_kind(config.oracle.kind).generative:
        raise ConfigError(f"{args.config}: compo probe measures the votes of an oracle on "
                          "generated responses; set oracle.kind: service (and "
                          "oracle.service_url)")
    check_start(config, args.config, None, use_ray=False)  # before the model loads
    tokenizer = load_tokenizer(config.model.path)
    data = load_tokenized(config.data, tokenizer)[0]
    print("\n".join(cost_lines(run_estimate(config, data, tokenizer), config.oracle.budget_usd)))
    if args.cost:
        return 0
    pairs = probe.distinct_prompts(data, args.prompts)
    model = load_model(config.model)
    weight = output_layer(model).weight.detach().float().clone()
    values = args.radii or [config.oracle.radius.value * f for f in probe.RADIUS_FACTORS]
    if not all(value > 0 for value in values) or args.prompts < 1 or args.directions < 1:
        raise ConfigError("compo probe: --radii must be > 0, --prompts and --directions >= 1")
    temperatures = args.temperatures or [config.oracle.temperature]
    rows = []
    for number, (temperature, value) in enumerate(
            (t, v) for t in temperatures for v in values):
        setting = probe.setting_config(config, value, temperature, args.directions)
        run_id = f"{config.run_id or 'run'}.probe-{number}"
        rows.append(probe.probe_setting(model, tokenizer, pairs, weight, setting, run_id))
    print(f"probe: {len(pairs)} prompts x {args.directions} directions, each judged at +z and "
          f"-z against the base response (oracle.radius mode {config.oracle.radius.mode}; "
          "identical responses are ties without a judge call)")
    print(probe.probe_table(rows))
    print(probe.recommendation(rows, config.oracle.radius.mode))
    return 0


def number_list(text: str) -> list[float]:
    """A comma-separated list of positive numbers (argparse type)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 0.5,1,2") from error
    if not all(value >= 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 0")
    return values


def cmd_apply_delta(args) -> int:
    from compo.model.export import apply_delta

    out = apply_delta(args.base, args.delta, args.out, args.dtype)
    print(f"wrote tuned model to {out}")
    return 0


def cmd_conformance(args) -> int:
    from compo import fileio
    from compo.config import ModelConfig
    from compo.model.conformance import check, family_table, markdown
    from compo.model.loading import load_model

    if args.model:
        rows = [check(load_model(ModelConfig(path=path)), path, args.perturbations)
                for path in args.model]
    else:
        rows = family_table(args.perturbations)
    table = markdown(rows)
    print(table, end="")
    if args.out:
        fileio.write_text(args.out, CONFORMANCE_HEADER + table)
        print(f"wrote {args.out}")
    if any(row.status in ("WRONG", "failed") for row in rows):
        return 1
    return 0 if all(row.refused is None for row in rows) or not args.model else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compo", description=" ".join(__doc__.split()))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one line")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole method on a tiny local model")
    demo.add_argument("--workdir", default="runs/demo", help="where everything is written")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    split = sub.add_parser("split", help="split pairs into clean/noisy by reference margin")
    split.add_argument("--config", required=True, help="split YAML (see SplitConfig)")
    split.set_defaults(func=cmd_split)

    train = sub.add_parser("train", help="run ComPO on (noisy) preference pairs")
    train.add_argument("--config", help="run YAML (see TrainConfig)")
    train.add_argument("--run-id", help="override the config's run_id")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a saved run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--ray-address", metavar="ADDRESS",
                       help="votes on a Ray cluster: auto, ray://host:10001 or host:port "
                       "(a config with a ray: section uses Ray without it)")
    train.set_defaults(func=cmd_train)

    probe = sub.add_parser(
        "probe", help="measure which generation radius and temperature give votes with signal",
        description="Before a service-oracle run: its judge cost (calls, tokens, dollars); per "
        "setting, a few directions are judged at "
        "+z and -z on a few prompts; prints how often perturbed responses differ from the "
        "base, whether +z / -z verdicts are opposite beyond chance (a permutation test over "
        "the directions, Bonferroni over the settings), and a recommendation.")
    probe.add_argument("--config", required=True, help="the run YAML (oracle.kind: service)")
    probe.add_argument("--radii", type=number_list, help="oracle.radius values, comma-"
                       "separated (default: the config's value x 0.5, 1, 2, 4)")
    probe.add_argument("--temperatures", type=number_list,
                       help="comma-separated (default: the config's oracle.temperature)")
    probe.add_argument("--prompts", type=int, default=4, help="distinct prompts of the data")
    probe.add_argument("--directions", type=int, default=16,
                       help="directions per setting (the test's independent units)")
    probe.add_argument("--cost", action="store_true",
                       help="print the run's judge cost estimate only (no probe)")
    probe.set_defaults(func=cmd_probe)

    delta = sub.add_parser("apply-delta", help="rebuild a tuned model from base + delta")
    delta.add_argument("--base", required=True, help="the run's base model directory")
    delta.add_argument("--delta", required=True, help="delta.safetensors of the run")
    delta.add_argument("--out", required=True, help="output model directory")
    delta.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    delta.set_defaults(func=cmd_apply_delta)

    conform = sub.add_parser(
        "conformance", help="check that ComPO reproduces a model's log-probs exactly",
        description="Base log-probs against the model's own forward and perturbed changes "
        "against a float64 forward with W + r z: for every decoder family (tiny random "
        "models), or for your checkpoints with --model (needs a float64 copy in memory).")
    conform.add_argument("--model", action="append", metavar="PATH",
                         help="a local checkpoint to check (repeatable)")
    conform.add_argument("--perturbations", type=int, default=200)
    conform.add_argument("--out", help="also write the table (markdown) to this file")
    conform.set_defaults(func=cmd_conformance)

    add_pipeline_commands(sub)  # pipeline, eval, compare, plot
    add_plan_command(sub)  # plan (compo/cli/plan.py)
    for command in plugins.COMMANDS:  # serve, reward-model (compo/plugins.py)
        plugins.resolve(command)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_transformers()
    try:
        return args.func(args)
    except Exception as error:  # a mistake a user can fix: one line (compo/cli/errors.py)
        explained = None if args.debug else explain(error)
        if explained is None:
            raise
        print(f"error: {explained[0]}", file=sys.stderr)
        return explained[1]


def quiet_transformers() -> None:
    """Hide per-file progress bars of transformers (our own bar shows progress) and the line
    httpx logs for every request (the oracle service's clients)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("httpx").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
