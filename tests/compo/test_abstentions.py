"""Abstentions: which iteration failed, the streak that stops a run, the cause in one line."""

from collections import Counter

import torch

from compo.abstentions import Abstentions, FailureStreak, abstentions_of, failure, from_votes
from compo.service_oracle.metrics import abstentions_from_counts

URL = "http://oracle:8000"


def test_directions_without_a_vote_are_the_default_count():
    found = from_votes(torch.tensor([0, 0, 0, 1, -1], dtype=torch.int8))
    assert (found.abstained, found.asked) == (3, 5)
    assert found.cause == "3 of 5 directions got no vote (every comparison of theirs abstained)"
    assert failure(found, 0.5) == found.cause and failure(found, 0.6) is None
    assert failure(Abstentions(0, 0, "nothing asked"), 0.0) is None


def test_a_source_may_give_its_own_account():
    class Source:
        @staticmethod
        def abstentions():
            return Abstentions(1, 2, "its own")

    votes = torch.zeros(4, dtype=torch.int8)
    assert abstentions_of(Source(), votes).cause == "its own"
    assert abstentions_of(object(), votes).abstained == 4


def test_the_streak_stops_at_the_limit_and_remembers_where_it_began():
    streak = FailureStreak(limit=3)
    assert not streak.observe("down", done=0, offset=0)
    assert not streak.observe(None, done=1, offset=5)  # an answered iteration resets it
    assert not streak.observe("down", done=2, offset=7)
    assert not streak.observe("down", done=3, offset=9)
    assert streak.observe("down", done=4, offset=11)
    assert (streak.done, streak.offset, streak.count) == (2, 7, 3)
    assert "after 3 failed iterations in a row" in streak.message("down", "runs/r")
    assert streak.message("down", "runs/r").endswith("compo train --resume runs/r")


def test_judge_errors_name_the_kind_and_the_fix_and_identical_ties_are_not_asked():
    counts = Counter(comparisons=30, verdict_tie=10, judge_ties=2, verdict_abstain=18,
                     verdict_a=2, error_auth_error=17, error_timeout=1)
    found = abstentions_from_counts(counts, URL)
    assert (found.abstained, found.asked) == (18, 22)  # 8 identical pairs needed no judge
    assert found.cause == ("judge answered auth_error for 17 of 22 comparisons: check "
                           "COMPO_ORACLE_JUDGE_API_KEY on the service")


def test_a_service_that_does_not_answer_is_named_with_its_error():
    counts = Counter(comparisons=24, verdict_abstain=24, error_connection_error=24,
                     service_failed=24)
    found = abstentions_from_counts(counts, URL, "ConnectError: refused")
    assert found.share == 1.0
    assert found.cause == (f"the oracle service at {URL} did not answer 24 of 24 comparisons "
                           "(ConnectError: refused): start it (compo serve) or fix "
                           "oracle.service_url")
