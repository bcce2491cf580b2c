"""Is the run learning? Figures for the progress bar, and warnings (each once per run) when
the votes carry no signal: most perturbed responses equal the base one, the antithetic
check looks like a coin, or every iteration so far was skipped. Pure bookkeeping over
metrics rows (compo/train.py feeds it; compo/service_oracle/metrics.py makes the rows)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from compo.config import TrainConfig
from compo.oracles import oracle_kind

log = logging.getLogger(__name__)

IDENTICAL_WARN_SHARE = 0.9  # perturbed responses equal to the base: votes are mostly ties
CHECK_MIN_PAIRS = 32  # antithetic pairs before the coin test is made
COIN_Z = 2.0  # opposite verdicts must beat a coin's rate by this many standard errors
MIN_VARIANCE = 1e-12  # keeps the coin test defined when every verdict is the same
SKIP_WARN_AFTER = 10  # iterations, all skipped, before the skip warning
TOTALS = ("iterations", "accepted", "ratio", "responses", "identical", "check_pairs",
          "check_opposite", "check_b", "failed", "abstained", "asked")
ABSTAIN_BLAME_SHARE = 0.2  # abstentions above this share, not the radius, explain skips
PROBE_HINT = "`compo probe --config RUN.yaml` measures which radius and temperature carry signal"


def coin_chance(pairs: int, b_verdicts: int) -> float:
    """Share of (+z, -z) pairs a coin gives opposite verdicts: 2p(1-p) with p = P(b)."""
    p = b_verdicts / (2 * pairs)
    return 2 * p * (1 - p)


def coin_z(pairs: int, opposite: int, b_verdicts: int) -> float:
    """How far the share of opposite verdicts on (+z, -z) pairs is above a coin's, in
    standard errors of a coin's share (a judge that cannot tell z from -z scores ~0)."""
    chance = coin_chance(pairs, b_verdicts)
    spread = math.sqrt(max(chance * (1 - chance), MIN_VARIANCE) / pairs)
    return (opposite / pairs - chance) / spread


def progress_figures(row: dict) -> dict[str, str]:
    """What the progress bar shows of an iteration: vote ratio, accepted, and for the
    service oracle the identical share, judge ties, position-inconsistent verdicts,
    abstentions and mean lengths base/perturbed (characters)."""
    figures = {"ratio": f"{row['ratio']:.2f}", "accepted": str(row["accepted"])}
    oracle = row.get("oracle")
    if oracle and oracle.get("responses"):
        figures.update(same=f"{oracle['identical_share']:.0%}", ties=str(oracle["ties"]),
                       incons=str(oracle["position_inconsistent"]),
                       abst=str(oracle["abstained"]),
                       len=f"{oracle['base_chars']:.0f}/{oracle['perturbed_chars']:.0f}")
    return figures


@dataclass
class RunWatch:
    """Sums over the run's rows and the warnings already given."""

    config: TrainConfig
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0))
    warned: set[str] = field(default_factory=set)
    cause: str = ""  # the last failed iteration's cause (compo/abstentions.py)

    def add(self, name: str, value: float) -> None:
        self.totals[name] += value

    def observe(self, row: dict) -> list[str]:
        """Update the sums with an iteration's row; the warnings it triggers (logged)."""
        self.tally(row)
        return [name for name, message in (("identical", self.identical_message()),
                                           ("coin", self.coin_message()),
                                           ("skipped", self.skip_message(SKIP_WARN_AFTER)))
                if message and self.warn(name, message)]

    def replay(self, rows: list[dict]) -> None:
        """The rows of a resumed run's earlier iterations, and the warnings they gave."""
        for row in rows:
            self.tally(row)
            self.warned.update(row.get("warnings", ()))

    def tally(self, row: dict) -> None:
        self.add("iterations", 1)
        self.add("accepted", int(row["accepted"]))
        self.add("ratio", row["ratio"])
        self.add("failed", int(bool(row.get("failed"))))
        self.cause = row.get("failed") or self.cause
        self.add("abstained", row.get("abstained", 0))  # directions without a vote
        self.add("asked", row.get("m", 0) + row.get("abstained", 0))
        oracle = row.get("oracle") or {}
        for name in ("responses", "identical"):
            self.add(name, oracle.get(name, 0))
        check = oracle.get("signal_check") or {}
        for name in ("pairs", "opposite", "b"):
            self.add(f"check_{name}", check.get(name, 0))

    def finish(self) -> list[str]:
        """At the end of the run: the skip warning for a short run that never accepted."""
        message = self.skip_message(1)
        return ["skipped"] if message and self.warn("skipped", message) else []

    def warn(self, name: str, message: str) -> bool:
        if name in self.warned:
            return False
        self.warned.add(name)
        log.warning("%s", message)
        return True

    def radius_text(self) -> str:
        radius = self.config.oracle.radius
        return f"oracle.radius {{mode: {radius.mode}, value: {radius.value:g}}}"

    def identical_message(self) -> str | None:
        responses, identical = self.totals["responses"], self.totals["identical"]
        if not responses or identical / responses < IDENTICAL_WARN_SHARE:
            return None
        return (f"{identical / responses:.0%} of perturbed responses so far equal the base "
                "response: each is a tie (vote +1), so the votes carry almost no signal and "
                f"iterations are skipped. Fix: raise {self.radius_text()} (e.g. double the "
                "value), or sample (oracle.temperature > 0 with oracle.noise: shared); "
                f"{PROBE_HINT}.")

    def coin_message(self) -> str | None:
        pairs = int(self.totals["check_pairs"])
        if pairs < CHECK_MIN_PAIRS:
            return None
        opposite, b = int(self.totals["check_opposite"]), int(self.totals["check_b"])
        if coin_z(pairs, opposite, b) >= COIN_Z:
            return None
        oracle = self.config.oracle
        sampling = (" Sampling noise decides the verdicts: use oracle.noise: shared."
                    if oracle.temperature > 0 and oracle.noise == "independent" else "")
        return (f"the votes are indistinguishable from a coin: of {pairs} directions judged "
                f"at +z and at -z, {opposite} got opposite verdicts ({opposite / pairs:.0%}); "
                f"a coin with the same share of b verdicts gives "
                f"{coin_chance(pairs, b):.0%}.{sampling} "
                f"Fix: change {self.radius_text()} or oracle.temperature (now "
                f"{oracle.temperature:g}), or use an oracle that can tell the responses "
                f"apart; {PROBE_HINT}.")

    def skip_message(self, after: int) -> str | None:
        iterations = int(self.totals["iterations"])
        if iterations < after or self.totals["accepted"]:
            return None
        compo = self.config.compo
        abstained = self.totals["abstained"] / max(1, self.totals["asked"])
        if self.totals["failed"] or abstained > ABSTAIN_BLAME_SHARE:  # not the radius
            failed = int(self.totals["failed"])
            why = (f"{failed} of them failed because the oracle abstained: {self.cause}"
                   if failed else f"{abstained:.0%} of the directions got no vote (the "
                   "oracle abstained)")
            return (f"all {iterations} iterations so far were skipped; {why}. Fix that first: "
                    "the radius and compo.accept_ratio are not the cause.")
        text = (f"all {iterations} iterations so far were skipped: mean vote ratio n-/m "
                f"{self.totals['ratio'] / iterations:.3f} <= compo.accept_ratio "
                f"{compo.accept_ratio:g}, so the model has not changed.")
        if oracle_kind(self.config.oracle.kind).generative:  # responses, not log-probs
            share = self.totals["identical"] / max(1, self.totals["responses"])
            return (f"{text} {share:.0%} of perturbed responses equal the base response. "
                    f"Fix: raise {self.radius_text()} or lower compo.accept_ratio; "
                    f"{PROBE_HINT}.")
        return (f"{text} Fix: raise compo.radius (now {compo.radius:g}) so perturbations "
                "change the pairs' log-probs, or lower compo.accept_ratio.")
