"""Position bias: content-seeded order swap (deterministic) and the both-orders mode."""

from __future__ import annotations

from oracle_service.testing.fake_judge import always_first

PAIRS = [
    (f"prompt {i}", f"answer {i} " + "x" * (i % 5 + 1), f"reply {i} " + "y" * 8) for i in range(24)
]


def items(swapped: bool = False, **extra: object) -> list[dict]:
    return [
        {"prompt": p, "response_a": b if swapped else a, "response_b": a if swapped else b, **extra}
        for p, a, b in PAIRS
    ]


def shown_first(fake_judge) -> list[str]:
    return [request.shown[0] for request in fake_judge.judge.requests]


def test_swap_is_deterministic_and_depends_on_content_only(
    make_settings, running_service, post_compare, fake_judge
):
    with running_service(make_settings(cache_enabled=False)) as http:
        first = post_compare(http, items())
        order_1 = shown_first(fake_judge)
        fake_judge.judge.requests.clear()
        again = post_compare(http, items())
        order_2 = shown_first(fake_judge)
        fake_judge.judge.requests.clear()
        mirrored = post_compare(http, items(swapped=True))
        order_3 = shown_first(fake_judge)

    assert sorted(order_1) == sorted(order_2) == sorted(order_3)  # same text shown first
    shown_a_first = {a for _, a, _ in PAIRS} & set(order_1)
    assert 0 < len(shown_a_first) < len(PAIRS)  # the hash puts either response first
    assert [r["verdict"] for r in first] == [r["verdict"] for r in again]
    flip = {"a": "b", "b": "a", "tie": "tie"}
    assert [r["verdict"] for r in mirrored] == [flip[r["verdict"]] for r in first]


def test_swap_spreads_a_position_biased_judge_over_both_sides(
    make_settings, running_service, post_compare, fake_judge
):
    fake_judge.judge.decide = always_first
    with running_service(make_settings()) as http:
        results = post_compare(http, items())
    first_texts = set(shown_first(fake_judge))
    for (_, a, _), result in zip(PAIRS, results, strict=True):
        assert result["verdict"] == ("a" if a in first_texts else "b")
    assert {r["verdict"] for r in results} == {"a", "b"}


def test_both_orders_mode_counts_inconsistency_as_tie(
    make_settings, running_service, post_compare, fake_judge
):
    with running_service(make_settings(judge_position_mode="both")) as http:
        fake_judge.judge.decide = always_first
        biased = post_compare(http, items(run_id="biased"))
        fake_judge.judge.requests.clear()
        fake_judge.judge.decide = lambda prompt, first, second: "B" if "reply" in second else "A"
        consistent = post_compare(
            http, [{**i, "prompt": "v2 " + i["prompt"]} for i in items(run_id="consistent")]
        )
        calls_for_consistent = len(fake_judge.judge.requests)
        biased_stats = http.get("/v1/runs/biased/stats").json()
        consistent_stats = http.get("/v1/runs/consistent/stats").json()

    assert all(r["verdict"] == "tie" for r in biased)
    assert biased_stats["position_inconsistent"] == len(PAIRS)
    assert biased_stats["votes"]["tie"] == len(PAIRS)
    assert all(r["verdict"] == "b" for r in consistent)  # the "reply" response wins both ways
    assert consistent_stats["position_inconsistent"] == 0
    assert calls_for_consistent == 2 * len(PAIRS)  # each pair asked in both orders
