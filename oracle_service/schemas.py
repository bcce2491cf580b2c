"""Wire models of the oracle service API, shared by server and client (no FastAPI here)."""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

API_PREFIX = "/v1"
DEFAULT_RUN_ID = "default"
# 1-128 letters, digits, '.', '_', '-', starting with a letter or digit: never '.', '..' or
# anything else a path, a shell or a file system reads as more than a name.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# Counts and indices: at most 2**53 - 1, the largest integer every JSON reader (a float64)
# holds exactly; well inside SQLite INTEGER and PostgreSQL BIGINT (2**63 - 1).
MAX_SAFE_INT = 2**53 - 1
MAX_ERROR_CHARS = 300  # an abstention's message is at most this long (sanitised)
EXTRA_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"  # extra fields of a summary
# An iteration summary's bounds (a coordinator posts ~30 fields, two more per Ray worker).
MAX_SUMMARY_FIELDS = 512  # named and extra fields together (422 beyond)
MAX_SUMMARY_BYTES = 64 * 1024  # the JSON body (413 beyond)
EXCERPT_CHARS = 80  # how much of a bad value an error message quotes


def valid_unicode(value: str) -> str:
    """Refuse lone surrogates: JSON escapes like "\\ud800" that are not Unicode text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"character {exc.start} is a lone surrogate (U+{ord(value[exc.start]):04X}), "
            "which is not valid Unicode: send the text as UTF-8"
        ) from None
    return value


def not_a_bool(value: object) -> object:
    """JSON true/false is not a number (pydantic would read it as 1/0)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


Text = Annotated[str, AfterValidator(valid_unicode)]
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INT), BeforeValidator(not_a_bool)]
Float = Annotated[float, BeforeValidator(not_a_bool)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0), BeforeValidator(not_a_bool)]


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
    INVALID_RESPONSE = "invalid_response"  # the judge's reply is not a well-formed completion
    DEADLINE_EXCEEDED = "deadline_exceeded"  # item_deadline_s or request_deadline_s ran out
    BUDGET = "budget"  # the judge budget (the service's or the run's) is spent: no call made
    INTERNAL_ERROR = "internal_error"  # a bug in the service, logged; never a verdict


# What to do about each kind of abstention, naming the service's setting: the service's
# readiness check and the ComPO client's messages say the same.
FIXES = {
    ErrorKind.AUTH_ERROR: "check COMPO_ORACLE_JUDGE_API_KEY on the service",
    ErrorKind.INSUFFICIENT_QUOTA: "the judge account has no quota left: add credit or set "
    "another COMPO_ORACLE_JUDGE_API_KEY on the service",
    ErrorKind.BAD_REQUEST: "check COMPO_ORACLE_JUDGE_MODEL and COMPO_ORACLE_JUDGE_BASE_URL on "
    "the service",
    ErrorKind.RATE_LIMITED: "the judge rate-limits the service: lower "
    "COMPO_ORACLE_JUDGE_REQUESTS_PER_MINUTE / COMPO_ORACLE_JUDGE_TOKENS_PER_MINUTE or raise "
    "the account's limits",
    ErrorKind.CONNECTION_ERROR: "the service cannot reach its judge: check "
    "COMPO_ORACLE_JUDGE_BASE_URL and the network of the service",
    ErrorKind.TIMEOUT: "the judge answers too slowly: check it, or raise "
    "COMPO_ORACLE_JUDGE_TIMEOUT_S on the service",
    ErrorKind.DEADLINE_EXCEEDED: "the judge answers too slowly: check it, or raise "
    "COMPO_ORACLE_ITEM_DEADLINE_S on the service",
    ErrorKind.SERVER_ERROR: "the judge fails (HTTP 5xx): check its status",
    ErrorKind.API_ERROR: "the judge's API fails: see the service log",
    ErrorKind.MALFORMED_OUTPUT: "the judge's replies are not verdicts: check "
    "COMPO_ORACLE_JUDGE_MODEL and the prompt template on the service",
    ErrorKind.INVALID_RESPONSE: "the judge's replies are not chat completions: check "
    "COMPO_ORACLE_JUDGE_BASE_URL (an OpenAI-compatible endpoint) on the service",
    ErrorKind.MODEL_ERROR: "the reward model cannot score: see the service log "
    "(COMPO_ORACLE_REWARD_MODEL_PATH, COMPO_ORACLE_REWARD_DEVICE)",
    ErrorKind.INTERNAL_ERROR: "a bug in the service: see its log",
}


def fix_for(kind: str) -> str:
    """The hint for an abstention kind (its value, e.g. 'auth_error')."""
    try:
        return FIXES[ErrorKind(kind)]
    except ValueError:
        return "see the service log"


class ComparisonItem(BaseModel):
    """One pair of responses to the same prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    response_a: Text
    response_b: Text
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN, description="Training run.")
    iteration: Count | None = Field(None, description="Coordinator iteration.")
    perturbation: Count | None = Field(
        None, description="Perturbation index within the iteration; echoed back."
    )


class RunBudget(BaseModel):
    """A run's own spend limit on judge calls: its comparisons abstain (kind `budget`),
    without a call, once the run's judge cost would pass `usd`. Spend is counted over the
    run id and its internal runs (`<run_id>.check`, `<run_id>.probe-N`)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    usd: Float = Field(gt=0, allow_inf_nan=False)


class ComparisonRequest(BaseModel):
    """A batch of comparisons; the batch limit is served by GET /v1/limits."""

    model_config = ConfigDict(extra="forbid")

    items: list[ComparisonItem] = Field(min_length=1)
    budget: RunBudget | None = Field(None, description="The run's judge budget (optional).")


class ComparisonError(BaseModel):
    """Why an item abstained."""

    kind: ErrorKind
    message: str = Field(max_length=MAX_ERROR_CHARS, description="Sanitised, secrets redacted.")


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
    cost_usd: float | None = Field(
        None, ge=0.0, description="What the judge calls of this item cost (0 for a cached or "
        "identical pair); None when the service has no prices.",
    )


class ComparisonResponse(BaseModel):
    results: list[ComparisonResult]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one readable line."""

    detail: str


class ValidationProblem(BaseModel):
    loc: list[str]
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    """422: one line per problem in `detail`, and the same problems as a list."""

    errors: list[ValidationProblem]


class ServiceLimits(BaseModel):
    """What a client needs to size its requests (and to estimate what a run costs)."""

    max_batch_size: int
    max_body_bytes: int
    backend: str
    calls_per_comparison: int = Field(1, description="Judge calls per non-identical pair.")
    template_chars: int = Field(0, description="Characters of the judge's system prompt and "
                                "template around the prompt and the two responses.")
    chars_per_token: float = Field(4.0, description="The service's token estimate.")
    max_completion_tokens: int = Field(0, description="Completion tokens per judge call, at most.")
    input_usd_per_mtok: float | None = Field(None, description="Judge prompt price per 1M tokens.")
    output_usd_per_mtok: float | None = Field(None, description="Judge output price per 1M tokens.")
    budget_usd: float | None = Field(None, description="The service's judge budget (all runs).")
    spent_usd: float | None = Field(None, description="What the judge has cost so far (priced).")


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


EXTRA_FIELDS_SCHEMA = {
    "additionalProperties": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    "propertyNames": {"pattern": EXTRA_NAME_PATTERN},
    "maxProperties": MAX_SUMMARY_FIELDS,
}


class IterationSummary(BaseModel):
    """The coordinator's summary of one iteration; extra numeric fields are kept, up to
    MAX_SUMMARY_FIELDS fields in all (and MAX_SUMMARY_BYTES of JSON).

    n_minus may not exceed m, a rule JSON Schema cannot state: `contradiction` says so, and
    the service answers 409 (the summary conflicts with itself).
    """

    model_config = ConfigDict(
        extra="allow", allow_inf_nan=False, json_schema_extra=EXTRA_FIELDS_SCHEMA
    )

    iteration: Count
    m: Count = Field(description="Perturbations that voted (abstentions excluded).")
    n_minus: Count = Field(description="Perturbations that improved the pair; <= m.")
    accepted: StrictBool = Field(description="False when the update was skipped.")
    step: Float | None = Field(None, description="Step size applied (gamma * n_minus / m).")
    kept_fraction: Fraction | None = Field(None, description="Entries kept by clip.")
    logp_chosen_change: Float | None = None
    logp_rejected_change: Float | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_field_count(cls, data: object) -> object:
        if isinstance(data, dict) and len(data) > MAX_SUMMARY_FIELDS:
            raise ValueError(f"an iteration summary has at most MAX_SUMMARY_FIELDS="
                             f"{MAX_SUMMARY_FIELDS} fields, this one {len(data)}")  # fmt: skip
        return data

    @model_validator(mode="after")
    def _check_extras(self) -> IterationSummary:
        for name, value in (self.model_extra or {}).items():
            if not re.fullmatch(EXTRA_NAME_PATTERN, name):
                shown = ascii(name)[:EXCERPT_CHARS]
                raise ValueError(f"extra field name {shown} must match {EXTRA_NAME_PATTERN}")
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                shown = ascii(value)[:EXCERPT_CHARS]
                raise ValueError(f"extra field {name!r} must be a number, got {shown}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"extra field {name!r} must be a finite number, got {value}")
        return self

    def contradiction(self) -> str | None:
        """Why the summary contradicts itself (n_minus > m), or None."""
        if self.n_minus > self.m:
            return f"n_minus ({self.n_minus}) cannot exceed m ({self.m})"
        return None


class IterationList(BaseModel):
    run_id: str
    iterations: list[IterationSummary]


RunState = Literal["running", "finished", "stopped", "failed"]


class RunStatus(BaseModel):
    """What the coordinator says of its run: running (with the iterations in all), or how
    it ended (stopped: early on purpose, resumable; failed: an error)."""

    model_config = ConfigDict(extra="forbid")

    state: RunState
    iterations_total: Count | None = Field(None, description="Iterations the run will make.")
    message: str = Field("", max_length=MAX_ERROR_CHARS, description="Why it stopped or failed.")


class RunInfo(BaseModel):
    """A run that has posted iteration summaries, and its status when it sent one."""

    run_id: str
    iterations: int = Field(ge=0, description="Summaries stored.")
    last_iteration: int = Field(ge=0)
    updated_at: float = Field(description="Unix time of the latest summary received.")
    state: RunState | None = Field(None, description="None: the run sent no status.")
    iterations_total: int | None = None
    message: str = ""


class RunList(BaseModel):
    runs: list[RunInfo]
