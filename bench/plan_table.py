"""README's `compo plan` table (`python bench/plan_table.py`): the command for four real
checkpoints on 30 GPUs of 80 GiB (body + head workers), m = 1,800, N = 1,000 tokens."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from compo.cli.main import main

JOB = """model: {path: unused, dtype: bfloat16}
data: {path: pairs.jsonl, max_prompt_tokens: 512, max_completion_tokens: 512}
compo: {num_perturbations: 1800}
"""
MODELS = {"mistral-7b": "Mistral-7B-v0.1", "llama-3-8b": "Meta-Llama-3-8B",
          "gemma-2-9b": "gemma-2-9b", "llama-3-70b": "Meta-Llama-3-70B"}
GPUS, GIB, TOKENS = 30, 80, 1000


def plan(job: Path, model: str, workers: int) -> dict:
    """The JSON line of `compo plan --json` for this model and worker count."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["plan", "--config", str(job), "--model", model, "--workers", str(workers),
              "--gpu-memory-gib", str(GIB), "--tokens", str(TOKENS), "--json"])
    return json.loads(out.getvalue().splitlines()[-1])


def on_all_gpus(job: Path, model: str) -> dict:
    """The plan whose body GPUs and head workers add up to GPUS."""
    body_gpus = plan(job, model, GPUS)["roles"]["body"]["gpus"]
    return plan(job, model, GPUS - body_gpus)


def row(name: str, result: dict) -> str:
    roles, seconds = result["roles"], result["seconds_per_iteration_estimate"]
    body, head = roles["body"], roles["head_worker"]
    return (f"| {name} | {result['params'] / 1e9:.1f}B | {body['gpus']} x {body['gib']:.1f} | "
            f"{head['instances']} x {head['gib']:.1f} | {roles['coordinator']['gib']:.1f} | "
            f"{result['bytes_per_iteration'] / 1e9:.2f} | {seconds['body']:.2f} + "
            f"{seconds['heads']:.2f} + {seconds['network']:.2f} = {seconds['total']:.2f} | "
            f"{'yes' if result['fits'] else 'NO'} |")


def table() -> str:
    """The markdown table, one row per checkpoint."""
    lines = ["| model | parameters | body: GPUs x GiB | head workers x GiB | coordinator GiB "
             "(host) | GB per iteration | seconds per iteration, estimate (body + heads + "
             "network) | fits |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "job.yaml"
        job.write_text(JOB)
        lines += [row(name, on_all_gpus(job, model)) for model, name in MODELS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
