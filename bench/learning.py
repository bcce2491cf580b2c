"""Does ComPO learn from an oracle that judges generated responses? On the embedded default
(CPU, no download), per seed:

(a) reward model: a sequence-classification model fitted on the demo's training pairs,
    served by the oracle service (backend reward_model); ComPO with it as the oracle; the
    mean reward (the service's own scoring) of greedy responses on held-out prompts, start
    model vs trained;
(b) judge with a known taste: the fake OpenAI-compatible judge preferring the shorter
    response, behind the real service; the mean length (characters) of greedy responses on
    held-out prompts, start vs trained.

python bench/learning.py [--seeds 0,1,2] [--oracle reward,shorter] [--iterations 30]
Prints a table and one JSON line per (oracle, seed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compo import fileio  # noqa: E402
from compo.demo import learning  # noqa: E402
from compo.demo.embedded import prepare_embedded  # noqa: E402
from oracle_service.backends.reward_model import RewardModelBackend  # noqa: E402
from oracle_service.core.settings import Settings  # noqa: E402
from oracle_service.main import create_app  # noqa: E402
from oracle_service.schemas import ComparisonItem  # noqa: E402
from oracle_service.testing.fake_judge import (  # noqa: E402
    BackgroundServer,
    FakeJudge,
    prefer_longer,
)

TOKEN_ENV = "COMPO_LEARNING_BENCH_TOKEN"
TOKEN = "learning-bench-token-8c1f"  # loopback services of this run only
STARTUP_S = 60


def prefer_shorter(prompt: str, first: str, second: str) -> str:
    """The judge's known taste: the shorter response wins (equal lengths: a tie)."""
    if len(first) == len(second):
        return "TIE"
    return "A" if len(first) < len(second) else "B"


@contextmanager
def service(db: Path, **settings):
    """The real oracle service on loopback; yields its URL."""
    app = create_app(Settings(api_token=TOKEN, db_path=db, **settings))
    with BackgroundServer(app) as server:
        yield server.url


TASTES = {"shorter": prefer_shorter, "longer": prefer_longer}
REWARDS = ("reward", "negated")


def serve_judge(db: Path, taste: str, urls, stop) -> None:
    """In a process of its own (no GIL shared with generation): the fake judge with its
    taste and the service before it, until `stop` is set."""
    with BackgroundServer(FakeJudge(TASTES[taste])) as judge, service(
            db, judge_base_url=f"{judge.url}/v1", judge_api_key="fake-judge-key",
            judge_model="fake-judge") as url:
        urls.put(url)
        stop.wait()


@contextmanager
def oracle_url(kind: str, workdir: Path, reward_dir: Path):
    """The service for one oracle kind: reward model, or the fake judge with its taste."""
    db = workdir / f"{kind}.sqlite3"
    if kind in REWARDS:
        path = reward_dir if kind == "reward" else learning.negated_dir(reward_dir)
        with service(db, backend="reward_model", reward_model_path=path,
                     reward_device="cpu") as url:
            yield url
        return
    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    process = context.Process(target=serve_judge, args=(db, kind, urls, stop), daemon=True)
    process.start()
    try:
        yield urls.get(timeout=STARTUP_S)
    finally:
        stop.set()
        process.join(STARTUP_S)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def measure(kind: str, reward_dir: Path, pairs, start: list[str], after: list[str]) -> dict:
    """Start vs trained: mean reward (reward oracle) or mean length (shorter oracle)."""
    if kind == "shorter":
        return {"metric": "mean length (chars)", "start": mean(map(len, start)),
                "after": mean(map(len, after)), "better": "lower"}
    backend = RewardModelBackend(Settings(api_token=TOKEN, backend="reward_model",
                                          reward_model_path=reward_dir, reward_device="cpu"))
    items = [ComparisonItem(prompt=pair.row["prompt"], response_a=a, response_b=b)
             for pair, a, b in zip(pairs, start, after, strict=True)]
    scored = backend.score_pairs(items)
    return {"metric": "mean reward", "start": mean(a for a, _ in scored),
            "after": mean(b for _, b in scored), "better": "higher"}


def run_one(kind: str, seed: int, workdir: Path, reward_dir: Path, data,
            settings: learning.LearningSettings) -> dict:
    started = time.perf_counter()
    shutil.rmtree(workdir / f"runs-{kind}" / f"learn-{seed}", ignore_errors=True)
    with oracle_url(kind, workdir, reward_dir) as url:
        config = learning.compo_config(data, url, TOKEN_ENV, workdir / f"runs-{kind}", seed,
                                       settings)
        weight = learning.train_compo(config)
    rows = fileio.read_jsonl(Path(config.output_dir) / config.run_id / "metrics.jsonl")
    pairs, start, after = learning.start_and_trained(data, weight, settings)
    result = measure(kind, reward_dir, pairs, start, after)
    changed = sum(a != b for a, b in zip(start, after, strict=True))
    return {"oracle": kind, "seed": seed, "prompts": len(pairs), **result,
            "changed": changed, "accepted": sum(row["accepted"] for row in rows),
            "iterations": len(rows), "seconds": round(time.perf_counter() - started, 1)}


def table(results: list[dict]) -> str:
    lines = ["| oracle | seed | held-out prompts | metric | start | after ComPO | responses "
             "changed | accepted iterations |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['oracle']} | {r['seed']} | {r['prompts']} | {r['metric']} "
                     f"({r['better']} is better) | {r['start']:.3f} | {r['after']:.3f} | "
                     f"{r['changed']} | {r['accepted']}/{r['iterations']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/learning")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--oracle", default="reward,shorter")
    parser.add_argument("--iterations", type=int, default=learning.LearningSettings.iterations)
    parser.add_argument("--perturbations", type=int,
                        default=learning.LearningSettings.perturbations)
    parser.add_argument("--radius", type=float, default=learning.LearningSettings.radius)
    parser.add_argument("--step-scale", type=float,
                        default=learning.LearningSettings.step_scale)
    parser.add_argument("--keep", type=float, default=learning.LearningSettings.keep)
    parser.add_argument("--batch-size", type=int, default=learning.LearningSettings.batch_size)
    args = parser.parse_args()
    settings = replace(learning.LearningSettings(), iterations=args.iterations,
                       perturbations=args.perturbations, radius=args.radius,
                       step_scale=args.step_scale, keep=args.keep, batch_size=args.batch_size)
    workdir = Path(args.workdir)
    os.environ[TOKEN_ENV] = TOKEN
    data = prepare_embedded(workdir / "embedded")
    reward_dir = workdir / "reward-model"
    if not (reward_dir / "config.json").is_file():
        learning.fit_reward_model(data.model_dir, fileio.read_jsonl(data.train), reward_dir,
                                  seed=0)
    accuracy = learning.pair_accuracy(reward_dir, fileio.read_jsonl(data.heldout))
    print(f"reward model: held-out pair accuracy {accuracy:.1%}")
    results = []
    for kind in args.oracle.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            results.append(run_one(kind, seed, workdir, reward_dir, data, settings))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
