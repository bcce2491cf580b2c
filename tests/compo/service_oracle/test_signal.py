"""Diagnostics of the votes against the real service: ties, position-inconsistent verdicts,
the antithetic signal check, and the warnings of a run whose votes carry no signal."""

import zlib

import pytest

from compo.config import GenerationRadius
from compo.train import ComPOTrainer, start_run
from tests.oracle_service.scripted import PERTURBATIONS, TOKEN_ENV, train_config

CHECKS = 6


BIASED_BUCKETS = 3  # one pair in 3 (by a position-free hash) meets the judge's position bias


def biased(first: str, second: str) -> bool:
    """Pairs on which the judge just names the first response shown, whatever it is."""
    return zlib.crc32("\0".join(sorted((first, second))).encode()) % BIASED_BUCKETS == 0


def shorter_or_first(prompt: str, first: str, second: str) -> str:
    """Prefers the shorter response; for equal lengths, and on biased pairs, it names the
    first one shown (a position bias, which judge_position_mode=both turns into an
    inconsistent tie)."""
    if len(first) == len(second) or biased(first, second):
        return "A"
    return "A" if len(first) < len(second) else "B"


def expected_verdict(base: str, text: str) -> str:
    if text == base:
        return "identical"
    if len(text) == len(base) or biased(base, text):
        return "inconsistent"
    return "b" if len(text) < len(base) else "a"


@pytest.fixture
def token_env(monkeypatch, api_token):
    monkeypatch.setenv(TOKEN_ENV, api_token)


def test_ties_inconsistent_verdicts_and_the_antithetic_check_are_counted(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge, token_env):
    fake_judge.judge.decide = shorter_or_first
    with running_service(make_settings(judge_position_mode="both")) as http:
        config = train_config(model_dir, pairs_file, tmp_path, "signal", str(http.base_url))
        config.oracle = config.oracle.model_copy(update={"signal_checks": CHECKS})
        trainer = ComPOTrainer(config, start_run(config))
        source = trainer.source.oracle  # the service oracle itself
        source.prepare(trainer.pairs[:1], trainer.base_weight.clone())
        votes = source.votes(config.seed, 0, list(range(PERTURBATIONS)))
        oracle = source.metrics()["oracle"]
        check_stats = http.get("/v1/runs/signal.check/stats").json()
        vote_stats = http.get("/v1/runs/signal/stats").json()
    base = source.base_responses(config.seed, 0)[0]
    plus = [row[0] for row in source.responses(config.seed, 0, range(PERTURBATIONS))]
    minus = [row[0] for row in source.responses(config.seed, 0, range(CHECKS), sign=-1)]
    kinds = [expected_verdict(base, text) for text in plus]
    assert votes.tolist() == [-1 if kind == "b" else 1 for kind in kinds]
    assert oracle["identical"] == kinds.count("identical")
    assert oracle["ties"] == oracle["position_inconsistent"] == kinds.count("inconsistent") > 0
    assert oracle["verdicts"]["tie"] == kinds.count("identical") + kinds.count("inconsistent")
    decisive = [(kinds[i], expected_verdict(base, minus[i])) for i in range(CHECKS)
                if kinds[i] in "ab" and expected_verdict(base, minus[i]) in "ab"]
    assert decisive, "the check needs decisive pairs to test anything"
    assert oracle["signal_check"] == {
        "pairs": len(decisive), "opposite": sum(p != m for p, m in decisive),
        "b": sum((p == "b") + (m == "b") for p, m in decisive)}
    assert check_stats["comparisons"] == CHECKS  # judged apart from the votes
    assert vote_stats["comparisons"] == PERTURBATIONS
    assert vote_stats["position_inconsistent"] == oracle["position_inconsistent"]


def test_a_run_whose_responses_all_equal_the_base_warns_once_with_the_fix(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge, token_env,
        caplog):
    with running_service(make_settings()) as http:
        config = train_config(model_dir, pairs_file, tmp_path, "flat", str(http.base_url))
        config.oracle = config.oracle.model_copy(
            update={"radius": GenerationRadius(mode="raw", value=1e-9)})
        trainer = ComPOTrainer(config, start_run(config))
        trainer.run(progress=False)
    rows = trainer.run_dir.metrics()
    assert all(row["oracle"]["identical_share"] == 1.0 and not row["accepted"] for row in rows)
    assert [row.get("warnings") for row in rows] == [["identical"], None, None]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    same = [w for w in warnings if "responses so far equal the base" in w]
    assert len(same) == 1 and "oracle.radius" in same[0] and "compo probe" in same[0]
    skipped = [w for w in warnings if "iterations so far were skipped" in w]
    assert len(skipped) == 1 and "all 3 iterations" in skipped[0]
