"""An iteration's comparisons with the service oracle, as its metrics row reports them.

Every count is a sum (a Ray coordinator adds its workers' counts); shares and means are
made from the sums here.
"""

from __future__ import annotations

from collections import Counter

from compo.abstentions import Abstentions
from oracle_service.schemas import VerdictLabel, fix_for

CHECK_SUFFIX = ".check"  # the antithetic signal check is judged under run id <run>.check
RUN_ID_LIMIT = 128  # characters of a run id (oracle_service.schemas.RUN_ID_PATTERN)
DECISIVE = (VerdictLabel.A, VerdictLabel.B)


def check_run_id(run_id: str) -> str:
    """The run id of a run's signal check comparisons (kept apart from its votes)."""
    return run_id[: RUN_ID_LIMIT - len(CHECK_SUFFIX)] + CHECK_SUFFIX


def check_counts(plus: VerdictLabel, minus: VerdictLabel) -> Counter:
    """Counts of one antithetic pair (verdicts on W + r z and W - r z against the base):
    decisive when both are a or b; opposite when they differ; b verdicts (for the chance)."""
    if plus not in DECISIVE or minus not in DECISIVE:
        return Counter()
    return Counter(check_pairs=1, check_opposite=int(plus is not minus),
                   check_b=int(plus is VerdictLabel.B) + int(minus is VerdictLabel.B))


def mean(total: float, count: int) -> float | None:
    return total / count if count else None


def oracle_metrics(counts: Counter) -> dict:
    """An iteration's comparisons: verdicts, abstentions by error kind, perturbed responses
    identical to the base one (a tie without a judge call) and their share, ties the judge
    gave, position-inconsistent verdicts, mean lengths (characters) of the base and the
    perturbed responses, the antithetic signal check's counts, the judge's cost (None: the
    service has no prices), seconds."""
    responses = counts["responses"]
    return {"oracle": {
        "comparisons": counts["comparisons"], "responses": responses,
        "identical": counts["identical"], "identical_share": mean(counts["identical"], responses),
        "ties": counts["judge_ties"], "position_inconsistent": counts["position_inconsistent"],
        "abstained": counts[f"verdict_{VerdictLabel.ABSTAIN.value}"],
        "verdicts": {label.value: counts[f"verdict_{label.value}"] for label in VerdictLabel},
        "errors": {key.removeprefix("error_"): value for key, value in counts.items()
                   if key.startswith("error_")},
        "base_chars": mean(counts["base_chars"], responses),
        "perturbed_chars": mean(counts["perturbed_chars"], responses),
        "signal_check": {name: counts[f"check_{name}"] for name in ("pairs", "opposite", "b")},
        "cost_usd": counts["cost_usd"] if counts["priced"] else None,
        "generated_tokens": counts["generated_tokens"],
        "generate_s": counts["generate_s"], "compare_s": counts["compare_s"]}}


def abstentions_from_counts(counts: Counter, url: str, detail: str | None = None
                            ) -> Abstentions:
    """An iteration's abstentions from its counts (summed over Ray workers alike), with the
    cause: the service failing to answer (`detail`: its last error), else the judge's
    most frequent error kind and its fix. Asked: the comparisons that needed an answer
    (identical responses are ties without a judge call)."""
    abstained = counts[f"verdict_{VerdictLabel.ABSTAIN.value}"]
    identical_ties = counts[f"verdict_{VerdictLabel.TIE.value}"] - counts["judge_ties"]
    asked = counts["comparisons"] - identical_ties
    unanswered = counts["service_failed"]
    kinds = Counter({key.removeprefix("error_"): value for key, value in counts.items()
                     if key.startswith("error_") and value})
    if unanswered and 2 * unanswered >= abstained:
        cause = (f"the oracle service at {url} did not answer {unanswered} of {asked} "
                 f"comparisons ({detail or 'no answer'}): start it (compo serve) or fix "
                 "oracle.service_url")
    elif kinds:
        kind, count = kinds.most_common(1)[0]
        cause = f"judge answered {kind} for {count} of {asked} comparisons: {fix_for(kind)}"
    else:
        cause = f"{abstained} of {asked} comparisons abstained"
    return Abstentions(abstained, asked, cause)
