"""`compo probe`: before a run spends judge money, which generation radius and temperature
give votes with signal? Per setting a few directions z are judged at +z and at -z on a few
prompts (the run's own service oracle): how often the perturbed responses differ from the
base response, and whether the verdicts on +z and -z are opposite more often than a coin's
(compo.diagnostics.coin_z; a judge that cannot tell z from -z scores ~0)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from compo.config import GenerationRadius, TrainConfig
from compo.data.formats import TokenizedPair
from compo.diagnostics import COIN_Z, coin_chance, coin_z
from compo.service_oracle.source import ServiceVoteSource

PROBE_ITERATION = 0  # the directions z(seed, 0, index) of the run's first iteration
MIN_PAIRS = 8  # decisive (+z, -z) pairs before a setting can be called one with signal
RADIUS_FACTORS = (0.5, 1.0, 2.0, 4.0)  # default radii: the config's value times these
FEW_DIFFER = 0.1  # below this share of differing responses, the radius is too small
HEADER = ("radius", "r", "temp", "differ", "compared", "abstain", "pairs", "opposite",
          "coin", "z", "signal")


@dataclass(frozen=True)
class ProbeRow:
    """One setting's measurements (responses: the +z ones, one per direction and prompt)."""

    value: float  # oracle.radius.value
    radius: float  # the resolved r
    temperature: float
    responses: int
    identical: int  # +z responses equal to the base response
    abstained: int  # of the +z comparisons
    pairs: int  # (+z, -z) pairs with two decisive verdicts
    opposite: int
    b: int  # b verdicts among the pairs' verdicts

    @property
    def differ(self) -> float:
        return 1 - self.identical / self.responses if self.responses else 0.0

    @property
    def z(self) -> float | None:
        return coin_z(self.pairs, self.opposite, self.b) if self.pairs else None

    @property
    def signal(self) -> bool:
        return self.pairs >= MIN_PAIRS and self.z is not None and self.z >= COIN_Z

    def cells(self) -> list[str]:
        none = "-"
        return [f"{self.value:g}", f"{self.radius:.3g}", f"{self.temperature:g}",
                f"{self.differ:.0%}", str(2 * self.responses), str(self.abstained),
                str(self.pairs),
                f"{self.opposite / self.pairs:.0%}" if self.pairs else none,
                f"{coin_chance(self.pairs, self.b):.0%}" if self.pairs else none,
                f"{self.z:.1f}" if self.z is not None else none,
                "yes" if self.signal else "no"]


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
    """The run's config with one probe setting: every direction is also judged at -z."""
    oracle = config.oracle.model_copy(update={
        "radius": GenerationRadius(mode=config.oracle.radius.mode, value=value),
        "temperature": temperature, "signal_checks": directions})
    compo = config.compo.model_copy(update={"num_perturbations": directions})
    return config.model_copy(update={"oracle": oracle, "compo": compo})


def probe_setting(model, tokenizer, pairs: Sequence[TokenizedPair], weight: torch.Tensor,
                  config: TrainConfig, run_id: str) -> ProbeRow:
    """Judge z and -z of config.compo.num_perturbations directions on the pairs' prompts."""
    source = ServiceVoteSource(model, tokenizer, config, run_id)
    try:
        source.prepare(pairs, weight)
        source.votes(config.seed, PROBE_ITERATION, list(range(config.compo.num_perturbations)))
        oracle = source.metrics()["oracle"]
    finally:
        source.close()
    check = oracle["signal_check"]
    return ProbeRow(config.oracle.radius.value, source.radius, config.oracle.temperature,
                    oracle["responses"], oracle["identical"], oracle["abstained"],
                    check["pairs"], check["opposite"], check["b"])


def probe_table(rows: Sequence[ProbeRow]) -> str:
    """The rows as an aligned text table."""
    lines = [list(HEADER), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths,
                                                                          strict=True))
                     for line in lines)


def recommendation(rows: Sequence[ProbeRow], mode: str) -> str:
    """The smallest radius (then the lowest temperature) with signal, or what to try."""
    found = [row for row in rows if row.signal]
    if found:
        best = min(found, key=lambda row: (row.value, row.temperature))
        return (f"recommended: oracle.radius {{mode: {mode}, value: {best.value:g}}} "
                f"(r = {best.radius:.3g}) with oracle.temperature {best.temperature:g}: the "
                f"smallest radius whose +z / -z verdicts are opposite beyond a coin's rate "
                f"(z = {best.z:.1f} >= {COIN_Z:g})")
    text = (f"no setting showed signal (z >= {COIN_Z:g} over >= {MIN_PAIRS} decisive "
            "(+z, -z) pairs). ")
    if all(row.differ < FEW_DIFFER for row in rows):
        return text + ("Perturbed responses mostly equal the base response: try larger "
                       "radii (--radii) or sampling (--temperatures 0.7).")
    return text + ("The oracle cannot tell +z from -z here: measure more surely with more "
                   "--prompts / --directions, try other --temperatures or radii, or use a "
                   "judge or reward model that can tell the responses apart.")
