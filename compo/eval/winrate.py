"""Judge win rate through the oracle service, with a length-controlled estimate.

Length control (in the spirit of AlpacaEval 2's LC win rate): fit
    P(model wins) = sigmoid(a + b * tanh(length difference / its standard deviation))
to the verdicts (ties count one half) and report sigmoid(a), the predicted win rate when
both responses have the same length.
"""

from __future__ import annotations

import os

import torch

from compo.errors import JudgeError
from compo.eval.config import JudgeConfig

RIDGE = 1e-2  # L2 penalty on (a, b): keeps them finite when one side wins every comparison
NEWTON_STEPS = 50  # Newton iterations of the two-parameter logistic fit (converges in ~10)
SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5}  # model is response_a; abstentions are left out



def length_controlled(scores: list[float], length_diffs: list[float]) -> float:
    """sigmoid(a) of the logistic fit of verdicts on tanh(normalized length difference)."""
    y = torch.tensor(scores, dtype=torch.float64)
    diffs = torch.tensor(length_diffs, dtype=torch.float64)
    scale = float(diffs.std()) if diffs.numel() > 1 else 0.0
    x = torch.tanh(diffs / scale) if scale > 0 else torch.zeros_like(diffs)
    features = torch.stack([torch.ones_like(x), x], dim=1)
    theta = torch.zeros(2, dtype=torch.float64)
    ridge = RIDGE * torch.eye(2, dtype=torch.float64)
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid(features @ theta)
        gradient = features.T @ (p - y) + ridge @ theta
        hessian = features.T @ (features * (p * (1 - p)).unsqueeze(1)) + ridge
        theta = theta - torch.linalg.solve(hessian, gradient)
    return float(torch.sigmoid(theta[0]))


def summarize(verdicts: list[str], responses: list[str], references: list[str]) -> dict:
    """Win rate, length-controlled win rate and counts from verdict labels."""
    kept = [(SCORES[v], len(r) - len(ref))
            for v, r, ref in zip(verdicts, responses, references, strict=True) if v in SCORES]
    scores = [score for score, _ in kept]
    return {
        "comparisons": len(verdicts), "abstained": len(verdicts) - len(kept),
        "wins": verdicts.count("a"), "losses": verdicts.count("b"), "ties": verdicts.count("tie"),
        "win_rate": sum(scores) / len(scores) if scores else None,
        "length_controlled_win_rate":
            length_controlled(scores, [diff for _, diff in kept]) if scores else None,
        "mean_chars_model": sum(map(len, responses)) / max(1, len(responses)),
        "mean_chars_reference": sum(map(len, references)) / max(1, len(references)),
    }


def judge_win_rate(prompts: list[str], responses: list[str], references: list[str],
                   judge: JudgeConfig) -> dict:
    """Model (response_a) against reference (response_b) on every prompt, via the service."""
    try:
        import httpx

        from oracle_service.client import OracleServiceError, SyncOracleClient
    except ImportError as error:
        raise JudgeError(f"judge needs the oracle service client ({error}); install it with: "
                         "pip install 'compo[service]'") from None
    token = os.environ.get(judge.token_env) if judge.token_env else None
    items = [{"prompt": p, "response_a": r, "response_b": ref, "run_id": judge.run_id}
             for p, r, ref in zip(prompts, responses, references, strict=True)]
    try:
        with SyncOracleClient(judge.url, token) as client:
            results = client.compare(items)
    except (httpx.HTTPError, OracleServiceError) as error:
        raise JudgeError(f"judge.url={judge.url}: {error}") from None
    verdicts = [result.verdict.value for result in results]
    return dict(summarize(verdicts, responses, references), url=judge.url)
