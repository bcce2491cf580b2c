"""What a service-oracle run will cost the judge, before it starts (`compo probe` prints it):
judge calls, tokens and dollars per iteration and per run, from the run's config, its data
and what the service says a call is made of and costs (GET /v1/limits).

Per iteration every perturbation is judged on every prompt of the batch, and
oracle.signal_checks directions once more at -z; each comparison is
`calls_per_comparison` judge calls (2 with judge_position_mode: both) whose prompt is the
judge's template, the prompt and two responses. Responses are taken as max_new_tokens long
(in characters: the data's own characters per token), so the figures are what a run costs
when no perturbed response equals the base one (those are ties without a call) and no
verdict is cached: about the most it costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compo.config import TrainConfig
from compo.data.formats import TokenizedPair
from oracle_service.schemas import ServiceLimits

TOKENS_PER_MTOK = 1_000_000  # prices are per million tokens
DEFAULT_CHARS_PER_TOKEN = 4.0  # when the data has no text responses to measure


@dataclass(frozen=True)
class CostEstimate:
    """The judge's work per iteration, and the run's iterations."""

    comparisons: int  # per iteration
    calls: int  # per iteration
    prompt_tokens: float  # per iteration
    completion_tokens: float  # per iteration
    iterations: int
    usd_per_mtok: tuple[float, float] | None  # (input, output); None: the service has none

    @property
    def usd(self) -> float | None:
        """Dollars per iteration (None without prices)."""
        if self.usd_per_mtok is None:
            return None
        prompt, output = self.usd_per_mtok
        return (self.prompt_tokens * prompt + self.completion_tokens * output) / TOKENS_PER_MTOK


def chars_per_token(pairs: Sequence[TokenizedPair]) -> float:
    """Characters per token of the data's responses (the policy's tokenizer)."""
    texts = [pair for pair in pairs if isinstance(pair.row.get("chosen"), str)]
    chars = sum(len(pair.row["chosen"]) for pair in texts)
    tokens = sum(len(pair.chosen_ids) for pair in texts)
    return chars / tokens if chars and tokens else DEFAULT_CHARS_PER_TOKEN


def estimate_cost(config: TrainConfig, prompts: Sequence[str], pairs: Sequence[TokenizedPair],
                  limits: ServiceLimits, iterations: int) -> CostEstimate:
    """The estimate for `iterations` iterations of batches of config.batch_size prompts
    (their mean length from `prompts`, the texts the service sees)."""
    oracle = config.oracle
    per_prompt = config.compo.num_perturbations + oracle.signal_checks
    comparisons = per_prompt * config.batch_size
    calls = comparisons * limits.calls_per_comparison
    response_chars = oracle.max_new_tokens * chars_per_token(pairs)
    prompt_chars = sum(map(len, prompts)) / max(1, len(prompts))
    call_chars = limits.template_chars + prompt_chars + 2 * response_chars
    prices = None
    if limits.input_usd_per_mtok is not None and limits.output_usd_per_mtok is not None:
        prices = (limits.input_usd_per_mtok, limits.output_usd_per_mtok)
    return CostEstimate(comparisons=comparisons, calls=calls,
                        prompt_tokens=calls * call_chars / limits.chars_per_token,
                        completion_tokens=calls * limits.max_completion_tokens,
                        iterations=iterations, usd_per_mtok=prices)


def run_estimate(config: TrainConfig, pairs: Sequence[TokenizedPair], tokenizer
                 ) -> CostEstimate:
    """The estimate of the configured run, with the limits and prices its service serves."""
    from compo.service_oracle.reporting import service_token
    from compo.service_oracle.source import prompt_text, service_url
    from compo.train import schedule
    from oracle_service.client import SyncOracleClient

    with SyncOracleClient(service_url(config), service_token(config),
                          timeout_s=config.oracle.timeout_s) as client:
        limits = client.limits()
    prompts = [prompt_text(pair, tokenizer) for pair in pairs]
    return estimate_cost(config, prompts, pairs, limits, len(schedule(len(pairs), config)))


def tokens(count: float) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def cost_lines(estimate: CostEstimate, budget_usd: float | None) -> list[str]:
    """What `compo probe` prints before it probes."""
    e = estimate
    lines = [f"judge cost of the run (responses of max_new_tokens, none identical to the base "
             f"nor cached: about the most): per iteration {e.comparisons:,} comparisons = "
             f"{e.calls:,} judge calls, {tokens(e.prompt_tokens)} prompt + "
             f"{tokens(e.completion_tokens)} completion tokens"]
    if e.usd is None:
        lines.append("  dollars: the service has no prices (set judge_input_usd_per_mtok and "
                     "judge_output_usd_per_mtok on it)")
        return lines
    lines.append(f"  ${e.usd:,.4f} per iteration, ${e.usd * e.iterations:,.2f} for the run's "
                 f"{e.iterations} iterations (prices ${e.usd_per_mtok[0]:g} / "
                 f"${e.usd_per_mtok[1]:g} per 1M tokens, from the service)")
    if budget_usd is not None:
        covered = int(budget_usd // e.usd) if e.usd > 0 else e.iterations
        lines.append(f"  oracle.budget_usd ${budget_usd:g} covers about "
                     f"{min(covered, e.iterations)} of {e.iterations} iterations")
    return lines
