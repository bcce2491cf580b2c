"""`compo probe`: before a run spends judge money, which generation radius and temperature
give votes with signal? Per setting a few directions z are judged at +z and at -z on a few
prompts (the run's own service oracle): how often the perturbed responses differ from the
base response, and whether the verdicts on +z and -z are opposite more often than chance.

The test is honest about what is independent: directions are independent draws, prompts
are not (every direction is judged on the same prompts). So the p-value comes from
re-pairing directions: under "the verdict at -z does not depend on the one at +z" the
verdict vectors (one per direction, over the prompts) at +z_i and -z_k are exchangeable,
so the true pairing is no more opposite than a random re-pairing (a permutation test,
exact whatever the prompts share). A setting has signal when its p-value is below ALPHA
divided by the number of settings tested (Bonferroni)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from compo.config import GenerationRadius, TrainConfig
from compo.data.formats import TokenizedPair
from compo.diagnostics import coin_chance
from compo.service_oracle.metrics import check_run_id
from compo.service_oracle.source import ServiceVoteSource
from oracle_service.schemas import ComparisonResult, VerdictLabel

PROBE_ITERATION = 0  # the directions z(seed, 0, index) of the run's first iteration
MIN_PAIRS = 8  # decisive (+z, -z) pairs before a setting can be called one with signal
ALPHA = 0.05  # family-wise error rate over all settings of one probe (Bonferroni)
PERMUTATIONS = 2000  # random re-pairings of the permutation test
PERMUTATION_SEED = 0  # the re-pairings are fixed: the same verdicts give the same p-value
RADIUS_FACTORS = (0.5, 1.0, 2.0, 4.0)  # default radii: the config's value times these
FEW_DIFFER = 0.1  # below this share of differing responses, the radius is too small
SIGNS = {VerdictLabel.A: 1, VerdictLabel.B: -1}  # tie and abstain: 0 (not decisive)
HEADER = ("radius", "r", "temp", "differ", "compared", "abstain", "pairs", "opposite",
          "coin", "p", "signal")


def verdict_signs(results: Sequence[ComparisonResult], directions: int) -> torch.Tensor:
    """[directions, prompts] of +1 (a), -1 (b), 0 (tie, abstain), from results in item order
    (direction-major, as ServiceVoteSource.items makes them)."""
    signs = torch.tensor([SIGNS.get(r.verdict, 0) for r in results], dtype=torch.float64)
    return signs.reshape(directions, -1)


def pairing_scores(plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """[n, n]: for +z_i against -z_k, decisive prompts with opposite verdicts minus those with
    the same verdict (-sum_j plus[i, j] * minus[k, j])."""
    return -(plus @ minus.T)


def permutation_p(plus: torch.Tensor, minus: torch.Tensor,
                  permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED) -> float:
    """One-sided p-value of the true pairing's score among random re-pairings of the
    directions ((1 + count at least as high) / (1 + permutations): valid at any count)."""
    scores = pairing_scores(plus, minus)
    count = scores.shape[0]
    generator = torch.Generator().manual_seed(seed)
    orders = torch.rand(permutations, count, generator=generator).argsort(-1)  # [perms, n]
    repaired = scores[torch.arange(count), orders].sum(-1)
    higher = int((repaired >= scores.diagonal().sum()).sum())
    return (1 + higher) / (1 + permutations)


@dataclass(frozen=True)
class ProbeRow:
    """One setting's measurements (responses: the +z ones, one per direction and prompt)."""

    value: float  # oracle.radius.value
    radius: float  # the resolved r
    temperature: float
    responses: int
    identical: int  # +z responses equal to the base response
    abstained: int  # of the +z comparisons
    pairs: int  # (+z, -z) pairs (same direction and prompt) with two decisive verdicts
    opposite: int
    b: int  # b verdicts among the pairs' verdicts
    p_value: float | None = None  # the permutation test's; None: no decisive pair

    @property
    def differ(self) -> float:
        return 1 - self.identical / self.responses if self.responses else 0.0

    def signal(self, tested: int) -> bool:
        """Enough decisive pairs, and p below ALPHA / tested (Bonferroni over the settings)."""
        return (self.pairs >= MIN_PAIRS and self.p_value is not None
                and self.p_value <= ALPHA / tested)

    def cells(self, tested: int) -> list[str]:
        none = "-"
        return [f"{self.value:g}", f"{self.radius:.3g}", f"{self.temperature:g}",
                f"{self.differ:.0%}", str(2 * self.responses), str(self.abstained),
                str(self.pairs),
                f"{self.opposite / self.pairs:.0%}" if self.pairs else none,
                f"{coin_chance(self.pairs, self.b):.0%}" if self.pairs else none,
                f"{self.p_value:.2g}" if self.p_value is not None else none,
                "yes" if self.signal(tested) else "no"]


def distinct_prompts(pairs: Sequence[TokenizedPair], count: int) -> list[TokenizedPair]:
    """The first `count` pairs with distinct prompts."""
    seen, out = set(), []
    for pair in pairs:
        key = tuple(pair.prompt_ids)
        if key not in seen:
            seen.add(key)
            out.append(pair)
        if len(out) == count:
            break
    return out


def setting_config(config: TrainConfig, value: float, temperature: float,
                   directions: int) -> TrainConfig:
    """The run's config with one probe setting of `directions` directions."""
    oracle = config.oracle.model_copy(update={
        "radius": GenerationRadius(mode=config.oracle.radius.mode, value=value),
        "temperature": temperature})
    compo = config.compo.model_copy(update={"num_perturbations": directions})
    return config.model_copy(update={"oracle": oracle, "compo": compo})


def judged(source: ServiceVoteSource, seed: int, indices: list[int], sign: int,
           run_id: str) -> tuple[list[ComparisonResult], int]:
    """The service's verdicts on (base, W + sign * r z) for every direction and prompt, and
    how many of those perturbed responses equal the base response."""
    base = source.base_responses(seed, PROBE_ITERATION)
    texts = source.responses(seed, PROBE_ITERATION, indices, sign)
    identical = sum(text == base[prompt] for row in texts for prompt, text in enumerate(row))
    results, _ = source.request(source.items(base, PROBE_ITERATION, indices, texts, run_id))
    return results, identical


def probe_row(config: TrainConfig, radius: float, plus: Sequence[ComparisonResult],
              minus: Sequence[ComparisonResult], identical: int) -> ProbeRow:
    """The setting's row from its +z and -z verdicts (`identical`: of the +z responses)."""
    directions = config.compo.num_perturbations
    signs = [verdict_signs(results, directions) for results in (plus, minus)]
    decisive = (signs[0] != 0) & (signs[1] != 0)
    pairs = int(decisive.sum())
    opposite = int((decisive & (signs[0] != signs[1])).sum())
    b = int((decisive & (signs[0] < 0)).sum() + (decisive & (signs[1] < 0)).sum())
    abstained = sum(r.verdict is VerdictLabel.ABSTAIN for r in plus)
    return ProbeRow(config.oracle.radius.value, radius, config.oracle.temperature, len(plus),
                    identical, abstained, pairs, opposite, b,
                    permutation_p(*signs) if pairs else None)


def probe_setting(model, tokenizer, pairs: Sequence[TokenizedPair], weight: torch.Tensor,
                  config: TrainConfig, run_id: str) -> ProbeRow:
    """Judge z and -z of config.compo.num_perturbations directions on the pairs' prompts
    (-z under the run's check id, apart from +z)."""
    source = ServiceVoteSource(model, tokenizer, config, run_id)
    indices = list(range(config.compo.num_perturbations))
    try:
        source.prepare(pairs, weight)
        plus, identical = judged(source, config.seed, indices, 1, source.run_id)
        minus, _ = judged(source, config.seed, indices, -1, check_run_id(source.run_id))
    finally:
        source.close()
    return probe_row(config, source.radius, plus, minus, identical)


def probe_table(rows: Sequence[ProbeRow]) -> str:
    """The rows as an aligned text table (signal: Bonferroni over all the rows)."""
    lines = [list(HEADER), *(row.cells(len(rows)) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths,
                                                                          strict=True))
                     for line in lines)


def recommendation(rows: Sequence[ProbeRow], mode: str) -> str:
    """The smallest radius (then the lowest temperature) with signal, or what to try."""
    level = ALPHA / len(rows)
    found = [row for row in rows if row.signal(len(rows))]
    if found:
        best = min(found, key=lambda row: (row.value, row.temperature))
        return (f"recommended: oracle.radius {{mode: {mode}, value: {best.value:g}}} "
                f"(r = {best.radius:.3g}) with oracle.temperature {best.temperature:g}: the "
                f"smallest radius whose +z / -z verdicts are opposite beyond chance "
                f"(p = {best.p_value:.2g} <= {ALPHA:g} / {len(rows)} settings)")
    text = (f"no setting showed signal (p <= {ALPHA:g} / {len(rows)} settings = {level:.2g} "
            f"over >= {MIN_PAIRS} decisive (+z, -z) pairs). ")
    if all(row.differ < FEW_DIFFER for row in rows):
        return text + ("Perturbed responses mostly equal the base response: try larger "
                       "radii (--radii) or sampling (--temperatures 0.7).")
    return text + ("The oracle cannot tell +z from -z here: measure more surely with more "
                   "--prompts / --directions, try other --temperatures or radii, or use a "
                   "judge or reward model that can tell the responses apart.")
