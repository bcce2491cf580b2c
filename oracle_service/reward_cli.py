"""`compo reward-model fit`: train the reward model that `backend: reward_model` serves, from
preference pairs (oracle_service/backends/reward_fit.py). A plugin of the compo CLI
(compo/plugins.py); argparse only at import (torch loads when it runs)."""

from __future__ import annotations

import argparse
import sys

SERVE_HINT = ("serve it: COMPO_ORACLE_BACKEND=reward_model COMPO_ORACLE_REWARD_MODEL_PATH={out} "
              "compo serve")


def add_reward_model_command(subparsers) -> None:
    """Add `reward-model fit` to the compo CLI's subcommands."""
    group = subparsers.add_parser("reward-model", help="fit a reward model for the service",
                                  description=__doc__.splitlines()[0])
    commands = group.add_subparsers(dest="reward_command", required=True)
    fit = commands.add_parser(
        "fit", help="train a sequence-classification reward model on preference pairs",
        description="Bradley-Terry on (prompt, chosen, rejected) JSONL pairs, scoring the "
        "texts exactly as the service's reward_model backend does; writes a directory to "
        "serve with COMPO_ORACLE_REWARD_MODEL_PATH.")
    fit.add_argument("--data", required=True, help="training pairs (JSONL: prompt, chosen, "
                     "rejected strings)")
    fit.add_argument("--base", required=True, help="local model directory: its weights get a "
                     "new one-score head (with --from-scratch: only its tokenizer is used)")
    fit.add_argument("--out", required=True, help="where the reward model is written")
    fit.add_argument("--eval", help="held-out pairs (JSONL): pair accuracy after the fit")
    fit.add_argument("--from-scratch", action="store_true",
                     help="a small Llama on the base's tokenizer instead of the base weights")
    fit.add_argument("--hidden", type=int, default=64, help="--from-scratch: hidden size")
    fit.add_argument("--layers", type=int, default=2, help="--from-scratch: layers")
    fit.add_argument("--steps", type=int, default=150)
    fit.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    fit.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--max-length", type=int, default=4096,
                     help="tokens per text (the service's reward_max_length)")
    fit.add_argument("--separator", default="\n\n", help="prompt/response separator for a "
                     "tokenizer without chat template (the service's reward_text_separator)")
    fit.add_argument("--device", default="cpu")
    fit.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from oracle_service.backends import reward_fit

    try:
        if min(args.steps, args.batch_size, args.max_length, args.hidden, args.layers) < 1:
            raise reward_fit.FitError("--steps, --batch-size, --max-length, --hidden and "
                                      "--layers must be >= 1")
        settings = reward_fit.FitSettings(
            steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
            seed=args.seed, max_length=args.max_length, separator=args.separator,
            device=args.device)
        scratch = (reward_fit.ScratchShape(hidden=args.hidden, layers=args.layers)
                   if args.from_scratch else None)
        rows = reward_fit.read_pairs(args.data)
        held = reward_fit.read_pairs(args.eval) if args.eval else None
        out, losses = reward_fit.fit_reward_model(args.base, rows, args.out, settings, scratch)
    except (reward_fit.FitError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"fitted a reward model on {len(rows)} pairs: loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f} ({len(losses)} steps)")
    if held is not None:
        accuracy = evaluate(out, held, settings)
        print(f"held-out pair accuracy: {accuracy:.1%} of {len(held)} pairs")
    print(f"wrote {out}; {SERVE_HINT.format(out=out)}")
    return 0


def evaluate(out, rows: list[dict], settings) -> float:
    """Pair accuracy of the saved model, loaded as the service loads it."""
    from transformers import AutoModelForSequenceClassification

    from oracle_service.backends import reward_fit

    model = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    return reward_fit.pair_accuracy(model, reward_fit.load_tokenizer(out), rows, settings)
