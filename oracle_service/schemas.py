"""Wire models of the oracle service API, shared by server and client (no FastAPI here)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

API_PREFIX = "/v1"
DEFAULT_RUN_ID = "default"
RUN_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"


class VerdictLabel(str, Enum):
    """Which response won; `abstain` means no verdict (see the error)."""

    A = "a"
    B = "b"
    TIE = "tie"
    ABSTAIN = "abstain"

    def flipped(self) -> VerdictLabel:
        """The same verdict with the two responses swapped."""
        swap = {VerdictLabel.A: VerdictLabel.B, VerdictLabel.B: VerdictLabel.A}
        return swap.get(self, self)


class ErrorKind(str, Enum):
    """Why a comparison abstained."""

    RATE_LIMITED = "rate_limited"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    AUTH_ERROR = "auth_error"
    BAD_REQUEST = "bad_request"
    API_ERROR = "api_error"
    MALFORMED_OUTPUT = "malformed_output"
    MODEL_ERROR = "model_error"


class ComparisonItem(BaseModel):
    """One pair of responses to the same prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    response_a: str
    response_b: str
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN, description="Training run.")
    iteration: int | None = Field(None, ge=0, description="Coordinator iteration.")
    perturbation: int | None = Field(
        None, ge=0, description="Perturbation index within the iteration; echoed back."
    )


class ComparisonRequest(BaseModel):
    """A batch of comparisons; the batch limit is served by GET /v1/limits."""

    model_config = ConfigDict(extra="forbid")

    items: list[ComparisonItem] = Field(min_length=1)


class ComparisonError(BaseModel):
    """Why an item abstained."""

    kind: ErrorKind
    message: str


class ComparisonResult(BaseModel):
    """The answer for one item, in request order."""

    verdict: VerdictLabel
    probability: float | None = Field(
        None, ge=0.0, le=1.0, description="P(response_a is better), when the backend gives one."
    )
    cached: bool = False
    error: ComparisonError | None = Field(None, description="Set exactly when verdict=abstain.")
    perturbation: int | None = None
    position_inconsistent: bool = Field(
        False, description="The judge's verdicts for the two orders disagreed (a tie)."
    )


class ComparisonResponse(BaseModel):
    results: list[ComparisonResult]


class ServiceLimits(BaseModel):
    """What a client needs to size its requests."""

    max_batch_size: int
    max_body_bytes: int
    backend: str


class VoteCounts(BaseModel):
    a: int = 0
    b: int = 0
    tie: int = 0
    abstain: int = 0


class StatsSummary(BaseModel):
    """Counters over a set of comparisons (all, one run, or one iteration)."""

    comparisons: int = 0
    votes: VoteCounts = Field(default_factory=VoteCounts)
    position_inconsistent: int = 0
    cache_hits: int = 0
    cache_hit_rate: float | None = None
    errors: dict[str, int] = Field(default_factory=dict, description="Abstentions by error kind.")
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class IterationStats(StatsSummary):
    iteration: int


class RunStats(StatsSummary):
    run_id: str
    iterations: list[IterationStats] = Field(default_factory=list)


class ServiceStats(StatsSummary):
    runs: dict[str, StatsSummary] = Field(default_factory=dict)


class IterationSummary(BaseModel):
    """The coordinator's summary of one iteration; extra numeric fields are kept."""

    model_config = ConfigDict(extra="allow")

    iteration: int = Field(ge=0)
    m: int = Field(ge=0, description="Perturbations that voted (abstentions excluded).")
    n_minus: int = Field(ge=0, description="Perturbations that improved the pair.")
    accepted: bool = Field(description="False when the update was skipped.")
    step: float | None = Field(None, description="Step size applied (gamma * n_minus / m).")
    kept_fraction: float | None = Field(None, ge=0.0, le=1.0, description="Entries kept by clip.")
    logp_chosen_change: float | None = None
    logp_rejected_change: float | None = None

    @model_validator(mode="after")
    def _check_counts_and_extras(self) -> IterationSummary:
        if self.n_minus > self.m:
            raise ValueError(f"n_minus ({self.n_minus}) cannot exceed m ({self.m})")
        for name, value in (self.model_extra or {}).items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"extra field {name!r} must be a number, got {value!r}")
        return self


class IterationList(BaseModel):
    run_id: str
    iterations: list[IterationSummary]


class RunInfo(BaseModel):
    """A run that has posted iteration summaries."""

    run_id: str
    iterations: int = Field(ge=0, description="Summaries stored.")
    last_iteration: int = Field(ge=0)
    updated_at: float = Field(description="Unix time of the latest summary received.")


class RunList(BaseModel):
    runs: list[RunInfo]
