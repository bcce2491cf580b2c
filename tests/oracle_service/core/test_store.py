"""The SQLite verdict cache: persistence across restarts, canonical order, no cached failures."""

from __future__ import annotations

import json
import sqlite3

import pytest

from oracle_service.backends.judge_parsing import verdict_from_raw
from oracle_service.testing.fake_judge import FakeReply

LONG, SHORT = "a long and detailed answer", "short"


def item(prompt: str, a: str, b: str, **extra: object) -> dict:
    return {"prompt": prompt, "response_a": a, "response_b": b, **extra}


def test_cache_survives_restart_and_serves_both_orders(
    make_settings, running_service, post_compare, fake_judge
):
    settings = make_settings()
    items = [item("p1", LONG, SHORT), item("p2", SHORT, LONG), item("p3", LONG, SHORT)]
    fake_judge.judge.enqueue(FakeReply(content="no idea"))  # the first call is malformed
    with running_service(settings) as http:
        first = post_compare(http, items)
    calls_before_restart = len(fake_judge.judge.requests)
    assert calls_before_restart == 3
    assert sum(r["verdict"] == "abstain" for r in first) == 1

    swapped = [item(i["prompt"], i["response_b"], i["response_a"]) for i in items]
    with running_service(settings) as http:  # a new app instance on the same file
        again = post_compare(http, items)
        mirrored = post_compare(http, swapped)

    assert [r["verdict"] for r in again] == ["a", "b", "a"]
    new_calls = len(fake_judge.judge.requests) - calls_before_restart
    assert new_calls == 1  # only the failed item is asked again: failures are not cached
    for before, after, flipped in zip(first, again, mirrored, strict=True):
        if before["verdict"] == "abstain":
            assert after["cached"] is False
            continue
        assert after == {**before, "cached": True}
        assert flipped["cached"] is True
        assert flipped["verdict"] == {"a": "b", "b": "a"}[before["verdict"]]


def test_cache_file_is_wal_and_keeps_raw_judge_output(
    make_settings, running_service, post_compare, tmp_path
):
    settings = make_settings(judge_logprobs=True)
    with running_service(settings) as http:
        [result] = post_compare(http, [item("p", SHORT, LONG)])
    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        [(label, probability, raw)] = conn.execute(
            "SELECT label, probability, raw FROM verdicts"
        ).fetchall()
    # Rows are stored in canonical (sorted) order: SHORT > LONG, so the item was flipped.
    assert (result["verdict"], label) == ("b", "a")
    assert probability == pytest.approx(1.0 - result["probability"])
    reparsed = verdict_from_raw(json.loads(raw), "token")  # parsing can be re-applied
    assert reparsed.label.value == label
    assert reparsed.probability == pytest.approx(probability)


def test_template_version_and_model_are_part_of_the_key(
    make_settings, running_service, post_compare, fake_judge
):
    items = [item("p", LONG, SHORT)]
    for overrides in ({}, {"judge_template_version": "v2"}, {"judge_model": "other-model"}):
        with running_service(make_settings(**overrides)) as http:
            [result] = post_compare(http, items)
            assert result["cached"] is False
            assert post_compare(http, items)[0]["cached"] is True
    assert len(fake_judge.judge.requests) == 3


def test_cache_can_be_disabled(make_settings, running_service, post_compare, fake_judge):
    with running_service(make_settings(cache_enabled=False)) as http:
        for _ in range(2):
            assert post_compare(http, [item("p", LONG, SHORT)])[0]["cached"] is False
    assert len(fake_judge.judge.requests) == 2
