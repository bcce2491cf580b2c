"""A scripted judge, a short run's config, and the check that a run and its service agree."""

from __future__ import annotations

import zlib

from compo.config import (
    ComPOConfig,
    DataConfig,
    GenerationRadius,
    ModelConfig,
    OracleConfig,
    TrainConfig,
)
from oracle_service.api.health import CANARY

TOKEN_ENV = "COMPO_TEST_ORACLE_TOKEN"  # the run reads its token from here
PERTURBATIONS = 24
ITERATIONS = 3
CRASH, MALFORMED = 0, 1  # buckets of the scripted judge (of JUDGE_BUCKETS)
JUDGE_BUCKETS = 6


def bucket(first: str, second: str) -> int:
    """A position-free hash bucket of the pair shown to the judge."""
    return zlib.crc32("\0".join(sorted((first, second))).encode()) % JUDGE_BUCKETS


def score(text: str, first: str, second: str) -> int:
    """The scripted judge's score of `text` shown in this pair: a crc32 salted with the
    pair (position-free), so that against a fixed base either side wins half the time."""
    return zlib.crc32("\0".join([text, *sorted((first, second))]).encode())


def scripted_judge(prompt: str, first: str, second: str) -> str:
    """Crash (HTTP 500), talk nonsense, or prefer the response with the larger score; the
    service's canary question (oracle_service/api/health.py) it answers right, as any
    working judge does."""
    if prompt == CANARY.prompt:
        return "A" if first == CANARY.response_a else "B"
    if bucket(first, second) == CRASH:
        raise RuntimeError("scripted judge crash")
    if bucket(first, second) == MALFORMED:
        return "I would rather not say."
    return "A" if score(first, first, second) > score(second, first, second) else "B"


def expected_vote(base: str, perturbed: str) -> int:
    """The vote the scripted judge implies: -1 when the perturbed response wins."""
    if base == perturbed:
        return 1  # identical responses: a tie without a judge call
    if bucket(base, perturbed) in (CRASH, MALFORMED):
        return 0
    return -1 if score(perturbed, base, perturbed) > score(base, base, perturbed) else 1


def train_config(model_dir, pairs_file, tmp_path, run_id: str, url: str | None,
                 kind: str = "service", **fields) -> TrainConfig:
    """A 3-iteration run of the tiny model with 24 perturbations of 4 generated tokens."""
    return TrainConfig(
        model=ModelConfig(path=str(model_dir)), data=DataConfig(path=str(pairs_file)),
        compo=ComPOConfig(num_perturbations=PERTURBATIONS, radius=0.05, accept_ratio=0.05,
                          step_scale=0.5),
        seed=3, max_iterations=ITERATIONS, output_dir=str(tmp_path / "runs"), run_id=run_id,
        oracle_service_url=url,
        oracle=OracleConfig(kind=kind, token_env=TOKEN_ENV, max_new_tokens=4,
                            temperature=0,  # the scripted verdicts are of greedy responses
                            radius=GenerationRadius(mode="raw", value=0.05),
                            generation_batch_size=12), **fields)


def check_against_service(http, run_id: str, rows: list[dict]) -> dict:
    """Per iteration: metrics and service stats agree; summaries were posted. Totals."""
    stats = http.get(f"/v1/runs/{run_id}/stats").json()
    assert stats["comparisons"] == PERTURBATIONS * len(rows)
    by_iteration = {item["iteration"]: item for item in stats["iterations"]}
    for row in rows:
        votes = by_iteration[row["iteration"]]["votes"]
        assert row["n_minus"] == votes["b"]  # verdict b (perturbed better) is a -1 vote
        assert row["m"] == votes["a"] + votes["b"] + votes["tie"]
        assert row["abstained"] == votes["abstain"] == row["oracle"]["verdicts"]["abstain"]
        assert row["reported"] and row["report_failures"] == 0
    posted = http.get(f"/v1/runs/{run_id}/iterations").json()["iterations"]
    assert [(s["iteration"], s["m"], s["n_minus"], s["accepted"], s["abstained"])
            for s in posted] == [(r["iteration"], r["m"], r["n_minus"], r["accepted"],
                                  r["abstained"]) for r in rows]
    return stats
