"""oracle.kind service: the policy generates a base response and one per perturbed output
layer; the oracle service (an LLM judge or a reward model) compares them
(compo/service_oracle/). Its token is read from an environment variable.

The implementation is reached through dotted names when used (compo.plugins.resolve): the
run's config composes this module's section, so it imports no module that imports it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compo.oracles.base import OracleSetup
from compo.plugins import resolve

SOURCE = "compo.service_oracle.source:ServiceVoteSource"  # the service extra (httpx)
REPORTING = "compo.service_oracle.reporting"


class Section(BaseModel):
    """Base of this module's settings: unknown keys are errors (as compo.config's)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationRadius(Section):
    """The radius of the perturbations that generate responses for the service oracle (its
    own: compo.radius is the likelihood oracle's, far too small to change a response).

    logit: r = value / (s * RMS ||h||), h the prompts' last hidden states and s the head's
      logit scale: each logit of a perturbed head moves by about `value` nats (std), so one
      value means about the same for every model; r is rounded to 3 significant digits.
    raw: r = value.
    Choose it with `compo probe` (README, "Choosing the generation radius").
    """

    mode: Literal["logit", "raw"] = "logit"
    value: float = Field(2.0, gt=0)


class ServiceSettings(Section):
    """The service oracle's fields of the oracle: section (generation and requests)."""

    service_url: str | None = Field(
        None, description="comparison service for kind=service; default: oracle_service_url")
    radius: GenerationRadius = Field(
        default_factory=GenerationRadius, description="radius of the perturbations that "
        "generate responses (see GenerationRadius; compo.radius is not used for them)")
    max_new_tokens: int = Field(128, gt=0, description="length limit of generated responses")
    temperature: float = Field(
        1.0, ge=0, description="sampling temperature; 0: greedy decoding (at a radius that "
        "changes responses, greedy verdicts are mostly ties: see README, 'Choosing the "
        "generation radius')")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (temperature > 0)")
    noise: Literal["shared", "independent"] = Field(
        "shared", description="sampling streams (temperature > 0): shared (common random "
        "numbers): every perturbed response reuses the base response's stream, so a "
        "verdict reflects the perturbation, not sampling luck; independent: a stream per "
        "(seed, iteration, perturbation), where verdicts mostly measure sampling luck")
    generation_batch_size: int | None = Field(
        None, gt=0, description="perturbations generated together; None: as many as fit "
        "in half the device's free memory (each holds a V x d direction in "
        "compo.direction_dtype and its KV cache), a power of two, decided once per process; "
        "set it to make batches independent of the machine's state")
    signal_checks: int = Field(
        4, ge=0, description="directions per iteration also judged at -z (antithetic): the "
        "run warns when their verdicts are not opposite more often than a coin's; costs "
        "signal_checks x prompts comparisons per iteration, not votes; 0: off")
    requests_in_flight: int = Field(
        4, gt=0, description="comparison requests a process keeps open while it generates "
        "the next batch (each holds one generation batch; overlaps judge latency)")
    request_batch_size: int | None = Field(
        None, gt=0, description="comparisons per HTTP request; default: the service's maximum")
    timeout_s: float = Field(300.0, gt=0, description="time for one comparisons request")
    budget_usd: float | None = Field(
        None, gt=0, description="the run's judge budget in dollars (the service needs judge "
        "prices): comparisons past it abstain without a judge call and the run stops, "
        "resumable, before that iteration's step (compo/service_oracle/budget.py); the "
        "service's own COMPO_ORACLE_BUDGET_USD applies as well. None: no run budget")


class ServiceOracle:
    """Verdicts of the oracle service on generated responses; every worker generates."""

    name, generative, settings = "service", True, ServiceSettings

    def check(self, config: Any) -> None:
        if config.compo.perturb.moves_layers:
            raise ValueError(f"compo.perturb.target {config.compo.perturb.target} works with "
                             "the likelihood oracle; the service oracle generates with a moved "
                             "output layer only. Set target: head or oracle.kind: likelihood")
        size, batch = config.ray and config.ray.chunk_size, config.oracle.generation_batch_size
        if isinstance(size, int) and batch and size % batch:  # auto: whole batches
            raise ValueError(
                f"ray.chunk_size ({size}) must be a multiple of oracle.generation_batch_size "
                f"({batch}), so every topology generates the same batches (e.g. chunk_size: "
                f"{batch * max(1, size // batch)})")

    def setup(self, config: Any, run_id: str) -> OracleSetup:
        """The run's setup, with the token of this process's environment (if set)."""
        from pydantic import SecretStr

        token = resolve(f"{REPORTING}:service_token")(config)
        run_id = resolve(f"{REPORTING}:checked_run_id")(run_id)
        return OracleSetup(config, run_id, None if token is None else SecretStr(token))

    def build(self, model: Any, tokenizer: Any, model_config: Any, compo: Any,
              setup: OracleSetup | None) -> Any:
        """The service's votes on this model's generations; a token in this process's
        environment wins over the one the setup carries."""
        if setup is None:
            raise ValueError("the service oracle is built from the run's setup "
                             "(oracle_kind('service').setup(config, run_id))")
        passed = setup.token.get_secret_value() if setup.token is not None else None
        token = resolve(f"{REPORTING}:service_token")(setup.config) or passed
        return resolve(SOURCE)(model, tokenizer, setup.config, setup.run_id, token)

    def fed(self, scorer: Any) -> Any:
        raise TypeError("the service oracle generates: every worker holds the model, no "
                        "body feeds it")

    def preflight(self, config: Any, where: str) -> None:
        resolve("compo.service_oracle.preflight:preflight")(config, where)

    def report_url(self, config: Any) -> str | None:
        return config.oracle.service_url

    def counted_metrics(self, counts: dict) -> dict:
        return resolve("compo.service_oracle.metrics:oracle_metrics")(counts)


KIND = ServiceOracle()
