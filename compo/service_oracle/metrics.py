"""An iteration's comparisons with the service oracle, as its metrics row reports them."""

from __future__ import annotations

from collections import Counter

from oracle_service.schemas import VerdictLabel


def oracle_metrics(counts: Counter) -> dict:
    """An iteration's comparisons: verdicts, abstentions by error kind, perturbed responses
    identical to the base one (a tie without a judge call), seconds."""
    return {"oracle": {
        "comparisons": counts["comparisons"], "identical": counts["identical"],
        "verdicts": {label.value: counts[f"verdict_{label.value}"] for label in VerdictLabel},
        "errors": {key.removeprefix("error_"): value for key, value in counts.items()
                   if key.startswith("error_")},
        "generate_s": counts["generate_s"], "compare_s": counts["compare_s"]}}
