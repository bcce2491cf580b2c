"""Warnings when the votes carry no signal, each once per run; the progress bar's figures."""

import logging

import pytest

from compo.config import DataConfig, ModelConfig, OracleConfig, TrainConfig
from compo.diagnostics import CHECK_MIN_PAIRS, RunWatch, coin_z, progress_figures


def config(kind="service", **oracle) -> TrainConfig:
    return TrainConfig(model=ModelConfig(path="m"), data=DataConfig(path="d"),
                       oracle=OracleConfig(kind=kind, **oracle))


def row(accepted=False, ratio=0.1, responses=10, identical=0, check=(0, 0, 0)) -> dict:
    pairs, opposite, b = check
    return {"accepted": accepted, "ratio": ratio, "oracle": {
        "responses": responses, "identical": identical,
        "identical_share": identical / responses, "ties": 1, "position_inconsistent": 2,
        "abstained": 3, "base_chars": 40.0, "perturbed_chars": 42.5,
        "signal_check": {"pairs": pairs, "opposite": opposite, "b": b}}}


def test_mostly_identical_responses_warn_once_with_the_fix(caplog):
    watch = RunWatch(config())
    assert watch.observe(row(accepted=True, identical=8)) == []  # 80%: not yet
    assert watch.observe(row(accepted=True, identical=9)) == []  # the run's share: 85%
    assert watch.observe(row(accepted=True, identical=10)) == ["identical"]  # 27/30
    assert watch.observe(row(accepted=True, identical=10)) == []  # once
    message = caplog.records[-1].getMessage()
    assert "90% of perturbed responses" in message and "oracle.radius" in message
    assert "oracle.noise: shared" in message and "compo probe" in message


@pytest.mark.parametrize("opposite, warns", [(CHECK_MIN_PAIRS // 2, True),
                                             (CHECK_MIN_PAIRS - 2, False)])
def test_antithetic_verdicts_no_better_than_a_coin_warn(opposite, warns, caplog):
    watch = RunWatch(config(temperature=0.7, noise="independent"))
    half = CHECK_MIN_PAIRS // 2
    assert watch.observe(row(accepted=True, check=(half, opposite // 2, half))) == []
    fired = watch.observe(row(accepted=True, check=(half, opposite - opposite // 2, half)))
    assert fired == (["coin"] if warns else [])
    if warns:
        message = caplog.records[-1].getMessage()
        assert f"{opposite} got opposite verdicts" in message and "a coin" in message
        assert "use oracle.noise: shared" in message  # the cause, when it is the config


def test_coin_z_measures_opposite_verdicts_against_the_chance_of_a_coin():
    assert coin_z(100, 50, 100) == pytest.approx(0.0)  # P(b) = 1/2: a coin opposes half
    assert coin_z(100, 18, 20) == pytest.approx(0.0)  # P(b) = 1/10: chance 2 * 0.1 * 0.9
    assert coin_z(100, 90, 100) > 7


def test_every_iteration_skipped_warns_after_ten_or_at_the_end(caplog):
    watch = RunWatch(config(kind="likelihood"))
    assert [watch.observe({"accepted": False, "ratio": 0.1}) for _ in range(9)] == [[]] * 9
    assert watch.observe({"accepted": False, "ratio": 0.1}) == ["skipped"]
    assert "compo.radius" in caplog.records[-1].getMessage()
    short = RunWatch(config())
    short.observe(row(identical=5))
    assert short.finish() == ["skipped"]
    assert "all 1 iterations so far were skipped" in caplog.records[-1].getMessage()
    learning = RunWatch(config())
    learning.observe(row(accepted=True))
    assert learning.finish() == []


def test_a_resumed_run_keeps_its_sums_and_warns_no_twice(caplog):
    watch = RunWatch(config())
    watch.replay([{**row(identical=10), "warnings": ["identical"]}] * 3)
    caplog.set_level(logging.WARNING)
    assert watch.observe(row(identical=10)) == []
    assert watch.totals["responses"] == 40


def test_progress_bar_shows_the_service_oracle_figures():
    assert progress_figures(row(identical=4)) == {
        "ratio": "0.10", "accepted": "False", "same": "40%", "ties": "1", "incons": "2",
        "abst": "3", "len": "40/42"}
    assert progress_figures({"ratio": 0.25, "accepted": True}) == {"ratio": "0.25",
                                                                   "accepted": "True"}


@pytest.mark.parametrize("kind", ["service", "likelihood"])
def test_skips_caused_by_abstentions_never_blame_the_radius(kind, caplog):
    watch = RunWatch(config(kind=kind))
    cause = ("judge answered auth_error for 24 of 24 comparisons: check "
             "COMPO_ORACLE_JUDGE_API_KEY on the service")
    failed = {"accepted": False, "ratio": 0.0, "m": 0, "abstained": 24, "failed": cause}
    assert watch.observe(failed) == []
    assert watch.finish() == ["skipped"]
    message = caplog.records[-1].getMessage()
    assert cause in message and "1 of them failed because the oracle abstained" in message
    assert "raise" not in message and "not the cause" in message


def test_many_abstentions_below_the_failure_ratio_are_named_too(caplog):
    watch = RunWatch(config(kind="likelihood"))
    mostly = {"accepted": False, "ratio": 0.0, "m": 10, "abstained": 14}  # 58% no vote
    assert watch.observe(mostly) == []
    assert watch.finish() == ["skipped"]
    message = caplog.records[-1].getMessage()
    assert "58% of the directions got no vote" in message and "not the cause" in message
    assert "raise compo.radius" not in message
