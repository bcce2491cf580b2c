"""Distributed ComPO on a local Ray cluster: throughput against workers, overhead, bytes.

Runs the real training loop (ComPOTrainer + RayVoteSource) on a small random Llama with
1 and then 2 CPU workers and reads the figures each iteration records in metrics.jsonl:
perturbations per second while voting, the coordinator's own time per iteration (rebuild
of sum y_i z_i from the votes, and publishing the step), and bytes moved. The first
iteration of each run is warm-up and left out. Prints one JSON line.

  python bench/ray_scaling.py                       # 1 and 2 workers, CPU
  python bench/ray_scaling.py --workers 1 2 4 --perturbations 800
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, RayConfig, TrainConfig
from compo.demo_data import ASSET
from compo.fileio import read_jsonl, write_jsonl
from compo.tiny import build_llama, build_tokenizer, save_model
from compo.train import start_run

REFERENCE_BYTES_PER_ITERATION = 3e9  # DESIGN.md section 2: scp of sums and bf16 heads
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def build_inputs(workdir: Path, vocab: int, hidden: int, pairs: int) -> tuple[Path, Path]:
    """A random Llama with a `vocab` x `hidden` output layer and the first demo pairs."""
    rows = read_jsonl(ASSET)[:pairs]
    texts = [row["prompt"] + row["chosen"] + row["rejected"] for row in rows]
    tokenizer = build_tokenizer(texts * 4, vocab_size=384)
    model = build_llama(vocab, hidden=hidden, layers=2, seed=0)
    model_dir = save_model(model, tokenizer, workdir / "model")
    return model_dir, write_jsonl(workdir / "pairs.jsonl", rows)


def run(workers: int, model_dir: Path, pairs: Path, args, workdir: Path) -> list[dict]:
    """One distributed run; returns its metrics rows after warm-up."""
    from compo.distributed import ray_trainer

    config = TrainConfig(
        model=ModelConfig(path=str(model_dir)), data=DataConfig(path=str(pairs)),
        compo=ComPOConfig(num_perturbations=args.perturbations, radius=1e-2,
                          accept_ratio=0.05, step_scale=0.1),
        seed=0, max_iterations=args.iterations + 1, shuffle=False,
        output_dir=str(workdir / "runs"), run_id=f"workers-{workers}",
        checkpoint_every=args.iterations + 1,
        ray=RayConfig(num_workers=workers, chunk_size=args.chunk_size))
    trainer = ray_trainer(config, start_run(config), progress=False)
    try:
        trainer.run(progress=False)
    finally:
        trainer.source.close()
    return trainer.run_dir.metrics()[1:]


def median(rows: list[dict], *path: str) -> float:
    values = []
    for row in rows:
        for key in path:
            row = row[key]
        values.append(row)
    return statistics.median(values)


def summarise(rows: list[dict]) -> dict:
    return {
        "perturbations_per_s": median(rows, "perturbations_per_s"),
        "votes_s": median(rows, "ray", "seconds", "votes"),
        "prepare_s": median(rows, "ray", "seconds", "prepare"),
        "rebuild_s": median(rows, "ray", "seconds", "rebuild"),
        "broadcast_s": median(rows, "ray", "seconds", "broadcast"),
        "bytes_total": median(rows, "ray", "bytes", "total"),
        "bytes_votes_per_perturbation": median(rows, "ray", "bytes", "votes_per_perturbation"),
        "bytes_object_store_puts": median(rows, "ray", "bytes", "object_store_puts"),
        "update_bytes": median(rows, "ray", "update_bytes"),
        "accepted": sum(row["accepted"] for row in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--perturbations", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=4, help="measured, after warm-up")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--coordinator-threads", type=int, default=1,
                        help="torch threads of the coordinator; on a few shared cores more "
                        "threads oversubscribe them and OpenMP slows the rebuild down")
    args = parser.parse_args()
    torch.set_num_threads(args.coordinator_threads)

    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=max(args.workers), object_store_memory=OBJECT_STORE_BYTES,
             include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            model_dir, pairs = build_inputs(workdir, args.vocab, args.hidden, args.iterations + 1)
            results = {str(n): summarise(run(n, model_dir, pairs, args, workdir))
                       for n in args.workers}
    finally:
        ray.shutdown()
    one = results[str(args.workers[0])]["perturbations_per_s"]
    print(json.dumps({
        "benchmark": "ray_scaling", "device": "cpu", "cpu_cores": os.cpu_count(),
        "output_layer": [args.vocab, args.hidden], "perturbations": args.perturbations,
        "chunk_size": args.chunk_size, "iterations_measured": args.iterations,
        "coordinator_threads": args.coordinator_threads,
        "workers": results,
        "speedup": {n: r["perturbations_per_s"] / one for n, r in results.items()},
        "dense_output_layer_bytes": args.vocab * args.hidden * 4,
        "reference_bytes_per_iteration": REFERENCE_BYTES_PER_ITERATION,
        "seconds": time.perf_counter() - started,
    }))


if __name__ == "__main__":
    main()
