"""Distributed ComPO on a local Ray cluster: throughput against workers, overhead, bytes.

Runs the real training loop (ComPOTrainer + RayVoteSource) on a small random Llama with
1 and then 2 CPU workers and reads the figures each iteration records in metrics.jsonl:
perturbations per second while voting, the coordinator's own time per iteration (rebuild
of sum y_i z_i from the votes, and publishing the step), and bytes moved. The first
iteration of each run is warm-up and left out. Prints one JSON line.
With --oracle judge the votes are the oracle service's verdicts: each run starts the fake
OpenAI-compatible judge (--judge-latency per reply) and a fresh service (empty cache) on
loopback, and the workers generate responses and call it.

  python bench/ray_scaling.py                       # 1 and 2 workers, CPU
  python bench/ray_scaling.py --workers 1 2 4 --perturbations 800
  python bench/ray_scaling.py --oracle judge --perturbations 96 --chunk-size 32
  python bench/ray_scaling.py --gpus-per-worker 0.3      # 1 and 2 workers and the body
                                                         # sharing one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, OracleConfig, RayConfig, TrainConfig
from compo.demo.pairs import ASSET
from compo.demo.tiny import build_llama, build_tokenizer, save_model
from compo.estimator import vote_weighted_rows
from compo.fileio import read_jsonl, write_jsonl
from compo.train import start_run

REFERENCE_BYTES_PER_ITERATION = 3e9  # DESIGN.md section 2: scp of sums and bf16 heads
OBJECT_STORE_BYTES = 200 * 1024 * 1024
TOKEN_ENV, TOKEN = "COMPO_BENCH_ORACLE_TOKEN", "bench-token-81d0c4"


def build_inputs(workdir: Path, vocab: int, hidden: int, pairs: int) -> tuple[Path, Path]:
    """A random Llama with a `vocab` x `hidden` output layer and the first demo pairs."""
    rows = read_jsonl(ASSET)[:pairs]
    texts = [row["prompt"] + row["chosen"] + row["rejected"] for row in rows]
    tokenizer = build_tokenizer(texts * 4, vocab_size=384)
    model = build_llama(vocab, hidden=hidden, layers=2, seed=0)
    model_dir = save_model(model, tokenizer, workdir / "model")
    return model_dir, write_jsonl(workdir / "pairs.jsonl", rows)


@contextmanager
def judge_service(latency_s: float, db_path: Path):
    """The fake judge and a service in front of it, in threads on loopback; yields its URL."""
    from oracle_service.core.settings import Settings
    from oracle_service.main import create_app
    from oracle_service.testing.fake_judge import BackgroundServer, FakeJudge

    with BackgroundServer(FakeJudge(latency_s=latency_s)) as judge:
        settings = Settings(api_token=TOKEN, judge_base_url=f"{judge.url}/v1",
                            judge_api_key="sk-bench", judge_model="fake-judge",
                            db_path=db_path, judge_max_concurrency=256)
        with BackgroundServer(create_app(settings)) as service:
            yield service.url


def oracle_config(args, url: str | None) -> OracleConfig:
    if url is None:
        return OracleConfig()
    return OracleConfig(kind="service", service_url=url, token_env=TOKEN_ENV,
                        max_new_tokens=args.new_tokens,
                        generation_batch_size=args.generation_batch)


def run(workers: int, model_dir: Path, pairs: Path, args, workdir: Path) -> list[dict]:
    """One distributed run (with its own judge service); its metrics rows after warm-up."""
    service = (judge_service(args.judge_latency, workdir / f"cache-{workers}.sqlite3")
               if args.oracle == "judge" else nullcontext())
    with service as url:
        return train(workers, model_dir, pairs, args, workdir, url)


def train(workers: int, model_dir: Path, pairs: Path, args, workdir: Path,
          url: str | None) -> list[dict]:
    """Train with `workers` Ray workers (url: the service oracle's, None: likelihood)."""
    from workers.coordinator import ray_trainer

    config = TrainConfig(
        model=ModelConfig(path=str(model_dir)), data=DataConfig(path=str(pairs)),
        compo=ComPOConfig(num_perturbations=args.perturbations, radius=1e-2,
                          accept_ratio=0.05, step_scale=0.1),
        seed=0, max_iterations=args.iterations + 1, shuffle=False,
        output_dir=str(workdir / "runs"), run_id=f"workers-{workers}",
        checkpoint_every=args.iterations + 1,
        ray=RayConfig(num_workers=workers, chunk_size=args.chunk_size,
                      **({"use_gpu": True, "gpus_per_worker": args.gpus_per_worker,
                          "gpus_per_body": args.gpus_per_worker}  # the body shares it too
                         if args.gpus_per_worker else {"use_gpu": False})),
        oracle=oracle_config(args, url))
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
    judged = "oracle" in rows[0]
    return {
        **({"comparisons_per_s": statistics.median(
            r["oracle"]["comparisons"] / r["ray"]["seconds"]["votes"] for r in rows),
            "base_s": median(rows, "ray", "seconds", "base"),
            # generating and waiting for the service, summed over workers: more than
            # workers x votes_s when requests overlap generation
            "generate_s": median(rows, "oracle", "generate_s"),
            "compare_s": median(rows, "oracle", "compare_s"),
            "abstained": sum(r["abstained"] for r in rows)} if judged else {}),
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


def coordinator_rebuild_s(args) -> float:
    """Seconds for this process alone to rebuild sum y_i z_i of m votes (what the
    coordinator did before workers rebuilt shards), median of 3."""
    shape, kept = (args.vocab, args.hidden), [(i, 1 - 2 * (i % 2)) for i in
                                               range(args.perturbations)]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        vote_weighted_rows(0, 1, kept, shape, range(args.vocab), None)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--perturbations", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=4, help="measured, after warm-up")
    parser.add_argument("--chunk-size", type=lambda v: v if v == "auto" else int(v),
                        default="auto", help="ray.chunk_size: auto or a number")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--oracle", choices=["likelihood", "judge"], default="likelihood")
    parser.add_argument("--judge-latency", type=float, default=0.2, help="seconds per reply")
    parser.add_argument("--new-tokens", type=int, default=16, help="judge: response length")
    parser.add_argument("--generation-batch", type=int, default=8,
                        help="judge: perturbations generated together (divides chunk size)")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="workers on GPUs, this share of one each (0.5: two per GPU); "
                        "default: CPU workers")
    parser.add_argument("--coordinator-threads", type=int, default=1,
                        help="torch threads of the coordinator; on a few shared cores more "
                        "threads oversubscribe them and OpenMP slows the rebuild down")
    args = parser.parse_args()
    torch.set_num_threads(args.coordinator_threads)
    os.environ[TOKEN_ENV] = TOKEN

    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=max(args.workers) + 1,  # + the body (likelihood)
             object_store_memory=OBJECT_STORE_BYTES,
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
    alone = coordinator_rebuild_s(args)
    print(json.dumps({
        "benchmark": "ray_scaling", "cpu_cores": os.cpu_count(),
        "device": (f"{torch.cuda.get_device_name()} ({args.gpus_per_worker:g} GPU per worker)"
                   if args.gpus_per_worker else "cpu"),
        "oracle": args.oracle, **({"judge_latency_s": args.judge_latency,
                                    "new_tokens": args.new_tokens} if args.oracle == "judge"
                                   else {}),
        "output_layer": [args.vocab, args.hidden], "perturbations": args.perturbations,
        "chunk_size": args.chunk_size, "iterations_measured": args.iterations,
        "coordinator_threads": args.coordinator_threads,
        "workers": results,
        "speedup": {n: r["perturbations_per_s"] / one for n, r in results.items()},
        "coordinator_rebuild_s": alone,
        "rebuild_speedup_vs_coordinator": {n: alone / r["rebuild_s"] for n, r in results.items()},
        "dense_output_layer_bytes": args.vocab * args.hidden * 4,
        "reference_bytes_per_iteration": REFERENCE_BYTES_PER_ITERATION,
        "seconds": time.perf_counter() - started,
    }))


if __name__ == "__main__":
    main()
