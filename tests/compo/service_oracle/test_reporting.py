"""What the coordinator posts per iteration: the metrics row's figures, the threshold, and
the service oracle's and Ray's figures flattened to numbers (the dashboard draws them)."""

from collections import Counter

import pytest

from compo.service_oracle.metrics import oracle_metrics
from compo.service_oracle.reporting import iteration_summary

ROW = {"iteration": 2, "m": 20, "n_minus": 6, "abstained": 4, "ratio": 0.3, "accepted": True,
       "step": 0.0105, "kept_fraction": 0.02, "update_norm": 0.0105, "seconds": 1.5,
       "perturbations_per_s": 16.0, "logp_chosen_before": [-3.0, -5.0],
       "logp_chosen_after": [-2.75, -4.75], "logp_rejected_before": [-4.0, -6.0],
       "logp_rejected_after": [-4.5, -6.5]}


def test_summary_has_the_row_figures_and_the_threshold():
    summary = iteration_summary(ROW, accept_ratio=0.2).model_dump()
    assert {key: summary[key] for key in ("iteration", "m", "n_minus", "accepted", "step",
                                           "kept_fraction", "ratio", "abstained")} == {
        key: ROW[key] for key in ("iteration", "m", "n_minus", "accepted", "step",
                                  "kept_fraction", "ratio", "abstained")}
    assert (summary["logp_chosen_change"], summary["logp_rejected_change"]) == (0.25, -0.5)
    assert summary["accept_ratio"] == 0.2
    assert "logp_chosen_before" not in summary  # lists stay in metrics.jsonl


def test_service_oracle_and_ray_figures_are_flattened():
    oracle = oracle_metrics(Counter(
        comparisons=24, responses=24, identical=3, judge_ties=1, position_inconsistent=1,
        verdict_a=10, verdict_b=6, verdict_tie=4, verdict_abstain=4, error_timeout=4,
        base_chars=24 * 40, perturbed_chars=24 * 41, check_pairs=4, check_opposite=3,
        check_b=5, generate_s=0.5, compare_s=0.7, cost_usd=0.25, priced=20))["oracle"]
    pytest.importorskip("ray")
    from workers.stats import IterationStats

    stats = IterationStats(redispatched=2, failures=1)
    stats.work = {"worker-0": [12, 0.5], "worker-1": [8, 0.25]}
    ray = {"workers": 2, "dead": 0, "unavailable": 1, "version": 3, **stats.report()}
    summary = iteration_summary({**ROW, "oracle": oracle, "ray": ray}).model_dump()
    assert {k: v for k, v in summary.items() if k.startswith(("oracle_", "ray_", "worker_"))} == {
        "oracle_comparisons": 24, "oracle_responses": 24, "oracle_identical": 3,
        "oracle_identical_share": 0.125, "oracle_ties": 1, "oracle_position_inconsistent": 1,
        "oracle_abstained": 4, "oracle_base_chars": 40.0, "oracle_perturbed_chars": 41.0,
        "oracle_check_pairs": 4, "oracle_check_opposite": 3, "oracle_check_b": 5,
        "oracle_generate_s": 0.5, "oracle_compare_s": 0.7, "oracle_cost_usd": 0.25,
        "ray_workers": 2, "ray_dead": 0,
        "ray_unavailable": 1,
        "ray_redispatched": 2, "ray_failures": 1, "ray_rejected": 0,
        "worker_per_s.worker-0": 24.0, "worker_perturbations.worker-0": 12,
        "worker_per_s.worker-1": 32.0, "worker_perturbations.worker-1": 8}
    assert "accept_ratio" not in summary  # only when the reporter knows the run's config
