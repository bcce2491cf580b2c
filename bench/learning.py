"""Does ComPO learn from an oracle that judges generated responses? On the embedded default
(CPU, no download), per seed, a contrast of opposite tastes over the same start model and
the same directions:

shorter / longer: the fake OpenAI-compatible judge preferring the shorter (the longer)
    response, behind the real service; metric: mean length (characters) of held-out
    responses;
reward / negated: a sequence-classification model fitted on the demo's training pairs
    (and the same model with its score negated), served by the oracle service (backend
    reward_model); metric: mean reward under the un-negated model (the service's scoring).

Training samples at oracle.temperature 1 with shared noise (common random numbers); the
metrics are over `samples` sampled responses per held-out prompt (the same streams for the
start and every trained model: an expected value) and over greedy responses.

python bench/learning.py [--seeds 0,1,2] [--oracle shorter,longer,reward,negated]
                         [--iterations 90]
Prints one JSON line per (oracle, seed), a table and the contrasts per seed.
python bench/learning.py --defaults 5: the default run config (oracle.kind: service and
nothing else) at the default temperature and at 0, against the shorter-taste judge.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compo import fileio  # noqa: E402
from compo.config import DataConfig, ModelConfig, OracleConfig, TrainConfig  # noqa: E402
from compo.demo import learning  # noqa: E402
from compo.demo.embedded import prepare_embedded  # noqa: E402
from oracle_service.backends import reward_fit  # noqa: E402
from oracle_service.backends.reward_model import RewardModelBackend  # noqa: E402
from oracle_service.core.settings import Settings  # noqa: E402
from oracle_service.main import create_app  # noqa: E402
from oracle_service.reward_cli import evaluate  # noqa: E402
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
        path = reward_dir if kind == "reward" else negated_dir(reward_dir)
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


def fit_reward_model(model_dir: Path, rows: list[dict], out: Path,
                     settings: reward_fit.FitSettings | None = None) -> Path:
    """What `compo reward-model fit --from-scratch` writes: a small Llama on the start
    model's tokenizer, fitted on `rows` (Bradley-Terry)."""
    return reward_fit.fit_reward_model(model_dir, rows, out, settings or reward_fit.FitSettings(),
                                       reward_fit.ScratchShape())[0]


def pair_accuracy(reward_dir: Path, rows: list[dict]) -> float:
    """Share of pairs whose chosen response the reward model scores above the rejected one
    (the service's texts, one padded batch)."""
    return evaluate(reward_dir, rows, reward_fit.FitSettings(batch_size=len(rows)))


def negated_dir(reward_dir: Path) -> Path:
    """Where the negated reward model of `reward_dir` is kept (see negate_reward_model)."""
    return reward_dir.with_name(reward_dir.name + "-negated")


@torch.no_grad()
def negate_reward_model(reward_dir: Path) -> Path:
    """The reward model with its scalar head negated (reward -r): the opposite taste, for
    the contrast of the learning check; saved next to `reward_dir`."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    model.score.weight.neg_()
    return reward_fit.save(model, reward_fit.load_tokenizer(reward_dir), negated_dir(reward_dir))


CONTRASTS = (("shorter", "longer"), ("reward", "negated"))  # (taste, its opposite)
BETTER = {"shorter": "lower", "longer": "higher", "reward": "higher", "negated": "lower"}


def reward_scorer(reward_dir: Path):
    """texts per prompt -> their mean reward under the reward model (the service's own
    scoring; the negated model's runs are scored by the un-negated one too)."""
    backend = RewardModelBackend(Settings(api_token=TOKEN, backend="reward_model",
                                          reward_model_path=reward_dir, reward_device="cpu"))

    def score(pairs, texts: list[list[str]]) -> float:
        items = [ComparisonItem(prompt=pair.row["prompt"], response_a=text, response_b=text)
                 for pair, row in zip(pairs, texts, strict=True) for text in row]
        scored = backend.score_pairs(items)
        return sum(a for a, _ in scored) / len(scored)
    return score


def measure(kind: str, score, pairs, held: learning.HeldOut) -> dict:
    """Mean length (length tastes) or mean reward (reward kinds) of the held-out responses,
    sampled (the expected value) and greedy."""
    if kind in TASTES:
        return {"metric": "mean length (chars)",
                "sampled": learning.mean_length([t for row in held.sampled for t in row]),
                "greedy": learning.mean_length(held.greedy)}
    return {"metric": "mean reward", "sampled": score(pairs, held.sampled),
            "greedy": score(pairs, [[text] for text in held.greedy])}


def train_one(kind: str, seed: int, workdir: Path, reward_dir: Path, data,
              settings: learning.LearningSettings) -> tuple:
    """ComPO against one oracle kind: the trained output layer and the run's metrics rows."""
    shutil.rmtree(workdir / f"runs-{kind}" / f"learn-{seed}", ignore_errors=True)
    with oracle_url(kind, workdir, reward_dir) as url:
        config = learning.compo_config(data, url, TOKEN_ENV, workdir / f"runs-{kind}", seed,
                                       settings)
        weight = learning.train_compo(config)
    return weight, fileio.read_jsonl(Path(config.output_dir) / config.run_id / "metrics.jsonl")


def run_seed(kinds: list[str], seed: int, workdir: Path, reward_dir: Path, data,
             settings: learning.LearningSettings) -> list[dict]:
    """Every kind on one seed (the same directions), measured on the held-out prompts."""
    started, trained = time.perf_counter(), {}
    for kind in kinds:
        trained[kind] = train_one(kind, seed, workdir, reward_dir, data, settings)
    pairs, start, held = learning.start_and_trained(
        data, {kind: weight for kind, (weight, _) in trained.items()}, settings)
    score = reward_scorer(reward_dir)
    start_facts = {f"{name}_start": value for name, value in start.greedy_facts(pairs).items()}
    results = []
    for kind, (_, rows) in trained.items():
        before, after = measure(kind, score, pairs, start), measure(kind, score, pairs, held[kind])
        results.append({
            "oracle": kind, "seed": seed, "prompts": len(pairs), "samples": settings.samples,
            "metric": after["metric"], "better": BETTER[kind], "start": before["sampled"],
            "after": after["sampled"], "greedy_start": before["greedy"],
            "greedy_after": after["greedy"],
            "changed": sum(a != b for a, b in zip(start.greedy, held[kind].greedy,
                                                  strict=True)),
            **start_facts,
            **held[kind].greedy_facts(pairs),
            "accepted": sum(row["accepted"] for row in rows), "iterations": len(rows),
            "seconds": round(time.perf_counter() - started, 1)})
    return results


def table(results: list[dict]) -> str:
    lines = ["| oracle | seed | held-out prompts | metric | start | after ComPO | greedy: "
             "start | greedy: after | greedy responses changed | greedy: chars, ended, "
             "correct (start -> after) | accepted iterations |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        facts = ", ".join(f"{r[f'{name}_start']:{form}} -> {r[name]:{form}}" for name, form
                          in (("greedy_length", ".1f"), ("greedy_ended", ".0%"),
                              ("greedy_correct", ".0%")))
        lines.append(f"| {r['oracle']} | {r['seed']} | {r['prompts']} | {r['metric']} "
                     f"({r['better']} is better), {r['samples']} samples per prompt | "
                     f"{r['start']:.3f} | {r['after']:.3f} | {r['greedy_start']:.3f} | "
                     f"{r['greedy_after']:.3f} | {r['changed']} | {facts} | "
                     f"{r['accepted']}/{r['iterations']} |")
    return "\n".join(lines)


def contrasts(results: list[dict]) -> list[str]:
    """Per seed and pair of opposite tastes: do the trained models end on opposite sides?"""
    after = {(r["oracle"], r["seed"]): r["after"] for r in results}
    lines = []
    for taste, opposite in CONTRASTS:
        for seed in sorted({r["seed"] for r in results}):
            if (taste, seed) in after and (opposite, seed) in after:
                sign = 1 if BETTER[taste] == "higher" else -1
                holds = sign * (after[taste, seed] - after[opposite, seed]) > 0
                lines.append(f"contrast {taste} vs {opposite}, seed {seed}: "
                             f"{after[taste, seed]:.3f} vs {after[opposite, seed]:.3f} "
                             f"({'holds' if holds else 'LOST'})")
    return lines


def prepare_reward_models(data, reward_dir: Path) -> None:
    """Fit the reward model and its negation once (scores every kind's held-out responses)."""
    if not (reward_dir / "config.json").is_file():
        fit_reward_model(data.model_dir, fileio.read_jsonl(data.train), reward_dir)
    if not (negated_dir(reward_dir) / "config.json").is_file():
        negate_reward_model(reward_dir)
    accuracy = pair_accuracy(reward_dir, learning.heldout_rows(data))
    print(f"reward model: held-out pair accuracy {accuracy:.1%}")


def default_run(workdir: Path, data, temperature: float, iterations: int) -> dict:
    """A run config with nothing but `oracle.kind: service` (and where the service is), at
    `temperature`, against the shorter-taste judge: what a new user's first run gets."""
    run_id = f"defaults-t{temperature:g}"
    shutil.rmtree(workdir / "runs-defaults" / run_id, ignore_errors=True)
    with oracle_url("shorter", workdir, workdir) as url:
        config = TrainConfig(
            model=ModelConfig(path=str(data.model_dir)), data=DataConfig(path=str(data.train)),
            max_iterations=iterations, output_dir=str(workdir / "runs-defaults"),
            run_id=run_id, oracle=OracleConfig(kind="service", service_url=url,
                                               token_env=TOKEN_ENV, temperature=temperature))
        learning.train_compo(config)
    rows = fileio.read_jsonl(Path(config.output_dir) / run_id / "metrics.jsonl")
    checks = [row["oracle"]["signal_check"] for row in rows]
    return {"temperature": temperature, "iterations": len(rows),
            "accepted": sum(row["accepted"] for row in rows),
            "vote_ratio": [round(row["ratio"], 3) for row in rows],
            "identical_share": [round(row["oracle"]["identical_share"], 3) for row in rows],
            "ties": [row["oracle"]["ties"] for row in rows],
            "signal_check_opposite": f"{sum(c['opposite'] for c in checks)}/"
                                     f"{sum(c['pairs'] for c in checks)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/learning")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--oracle", default="shorter,longer,reward,negated")
    parser.add_argument("--iterations", type=int, default=learning.LearningSettings.iterations)
    parser.add_argument("--perturbations", type=int,
                        default=learning.LearningSettings.perturbations)
    parser.add_argument("--radius", type=float, default=learning.LearningSettings.radius)
    parser.add_argument("--step-scale", type=float,
                        default=learning.LearningSettings.step_scale)
    parser.add_argument("--keep", type=float, default=learning.LearningSettings.keep)
    parser.add_argument("--batch-size", type=int, default=learning.LearningSettings.batch_size)
    parser.add_argument("--temperature", type=float,
                        default=learning.LearningSettings.temperature)
    parser.add_argument("--samples", type=int, default=learning.LearningSettings.samples)
    parser.add_argument("--directions", default="gaussian", help="compo.directions of the "
                        "runs: gaussian or rank<r> (low rank, e.g. rank4)")
    parser.add_argument("--defaults", type=int, metavar="ITERATIONS",
                        help="instead: runs with the default config (oracle.kind: service), "
                        "at the default temperature and greedy, for this many iterations")
    args = parser.parse_args()
    settings = replace(learning.LearningSettings(), iterations=args.iterations,
                       perturbations=args.perturbations, radius=args.radius,
                       step_scale=args.step_scale, keep=args.keep, batch_size=args.batch_size,
                       temperature=args.temperature, samples=args.samples,
                       directions=args.directions)
    workdir = Path(args.workdir)
    os.environ[TOKEN_ENV] = TOKEN
    data = prepare_embedded(workdir / "embedded")
    if args.defaults:
        for temperature in (OracleConfig().temperature, 0.0):
            print(json.dumps(default_run(workdir, data, temperature, args.defaults)), flush=True)
        return
    reward_dir = workdir / "reward-model"
    prepare_reward_models(data, reward_dir)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results += run_seed(args.oracle.split(","), seed, workdir, reward_dir, data, settings)
        for result in results[-len(args.oracle.split(",")):]:
            print(json.dumps(result), flush=True)
    print(table(results))
    print("\n".join(contrasts(results)))


if __name__ == "__main__":
    main()
