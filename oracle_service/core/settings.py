"""Service settings: one class, read from COMPO_ORACLE_* environment variables or YAML."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "COMPO_ORACLE_"
PLACEHOLDER_TOKENS = frozenset(
    {"", "changeme", "change-me", "change_me", "placeholder", "secret", "token", "password"}
)
MIN_TOKEN_CHARS = 16
MIN_TOKEN_BITS = 64.0  # length x Shannon entropy of the token's own characters
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
STORE_SCHEMES = ("postgresql://", "postgres://")

TOKEN_TEMPLATE = """Compare two responses to the same user prompt and decide which one is better: \
more helpful, more correct and clearer. Length alone is not a merit.

[Prompt]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

Reply with exactly one word: A if Response A is better, B if Response B is better, \
or TIE if they are equally good."""

JSON_TEMPLATE = TOKEN_TEMPLATE.rsplit("\n\n", 1)[0] + (
    '\n\nReply with a JSON object {"winner": "A"}, {"winner": "B"} or {"winner": "TIE"}.'
)

SYSTEM_PROMPT = "You are a careful, impartial judge of answers to user prompts."
TEMPLATE_FIELDS = ("{prompt}", "{response_a}", "{response_b}")


class StartupError(ValueError):
    """The service cannot start with these settings; the message names the setting."""


class InsecureSettingsError(StartupError):
    """Raised when the service would start without a strong API token outside dev mode."""


def token_bits(token: str) -> float:
    """len(token) x the Shannon entropy of its characters: 0 for 'aaaa', ~6/char if random."""
    counts = Counter(token)
    return -sum(count * math.log2(count / len(token)) for count in counts.values())


class Settings(BaseSettings):
    """Everything configurable; environment variables override the YAML file."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # --- server ---
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="uvicorn and logging level."
    )
    api_token: SecretStr = Field(SecretStr(""), description="Bearer token clients must send.")
    dev_mode: bool = Field(False, description="Allow a weak token (no auth if empty).")
    max_batch_size: int = Field(256, ge=1, description="Most items in one comparisons request.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1, description="Largest request body accepted.")
    item_deadline_s: float = Field(
        60.0, gt=0, description="Longest time for one item from the request's arrival: every "
        "judge call, retry and Retry-After wait; then it abstains (deadline_exceeded).",
    )
    request_deadline_s: float = Field(
        90.0, gt=0, description="Longest time before a request is answered (the final store "
        "write aside); well below the client's own timeout (300 s).",
    )
    shutdown_timeout_s: float = Field(
        10.0, ge=0, description="On SIGTERM: wait this long for open requests, then cancel them."
    )
    request_header_timeout_s: float = Field(
        10.0, gt=0, description="A client must send a request's headers within this long of "
        "connecting (or of its first byte after a keep-alive pause); else 408 and closed.",
    )
    request_body_timeout_s: float = Field(
        60.0, gt=0, description="A client must send a request's whole body within this long "
        "of its headers; else the connection is closed.",
    )

    # --- storage ---
    db_path: Path = Field(Path("oracle_service.sqlite3"), description="SQLite file (cache, runs).")
    store_url: SecretStr = Field(
        SecretStr(""), description="postgresql://user:password@host:5432/db: one store shared "
        "by several replicas (cache, iteration summaries, stats); empty: SQLite at db_path.",
    )
    store_pool_size: int = Field(10, ge=1, description="PostgreSQL connections per replica.")
    store_timeout_s: float = Field(30.0, gt=0, description="PostgreSQL connect/statement timeout.")
    cache_enabled: bool = Field(True, description="Read and write the verdict cache.")
    sqlite_wal: bool = Field(True, description="Use SQLite WAL journal mode.")
    sqlite_busy_timeout_s: float = Field(30.0, gt=0, description="Wait for a locked database.")

    # --- backend choice ---
    backend: Literal["judge", "reward_model"] = Field("judge", description="Which oracle.")

    # --- LLM judge (any OpenAI-compatible endpoint) ---
    judge_base_url: str = Field("https://api.openai.com/v1", description="Endpoint base URL.")
    judge_api_key: SecretStr = Field(SecretStr(""), description="Key; empty: OPENAI_API_KEY.")
    judge_model: str = Field("gpt-4o-mini", description="Model name sent to the endpoint.")
    judge_template: str | None = Field(None, description="User prompt template; None: built-in.")
    judge_template_version: str = Field("pairwise-v1", description="Bump when editing template.")
    judge_system_prompt: str = Field(SYSTEM_PROMPT, description="System message.")
    judge_output_format: Literal["token", "json"] = Field("token", description="A/B/TIE or JSON.")
    judge_temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    judge_max_tokens: int = Field(8, ge=1, description="Completion token limit per call.")
    judge_logprobs: bool = Field(False, description="Ask for logprobs to get a probability.")
    judge_top_logprobs: int = Field(5, ge=1, le=20, description="Alternatives per token.")
    judge_position_mode: Literal["swap", "both"] = Field(
        "swap", description="swap: content-seeded order; both: ask both orders, disagreement=tie."
    )
    judge_timeout_s: float = Field(
        30.0, gt=0, description="Longest time for one HTTP attempt, reading the body included."
    )
    judge_max_response_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest judge reply read; longer ones abstain."
    )
    judge_max_kept_bytes: int = Field(
        4096, ge=256, description="Most of one judge reply kept once read: an error body is "
        "cut here (the rest is not read), a longer answer abstains (malformed_output).",
    )
    judge_max_concurrency: int = Field(64, ge=1, description="Judge calls in flight at once.")
    judge_slow_call_s: float = Field(
        10.0, gt=0, description="A call running longer moves to a slow-call slot, freeing its "
        "place, so hung calls cannot hold every slot.",
    )
    judge_max_slow_calls: int = Field(64, ge=0, description="Slow calls in flight at once.")
    judge_connections_per_pool: int = Field(
        32, ge=1, description="HTTP connections per client pool (pools scale with concurrency)."
    )
    judge_requests_per_minute: float | None = Field(None, gt=0, description="None: unlimited.")
    judge_tokens_per_minute: float | None = Field(None, gt=0, description="None: unlimited.")
    rate_limit_burst_s: float = Field(1.0, gt=0, description="Seconds of budget usable at once.")
    chars_per_token: float = Field(4.0, gt=0, description="Token estimate for the TPM limit.")
    judge_input_usd_per_mtok: float | None = Field(None, ge=0, description="Prompt price/1M.")
    judge_output_usd_per_mtok: float | None = Field(None, ge=0, description="Output price/1M.")
    budget_usd: float | None = Field(
        None, gt=0, description="Spend limit of the judge over all runs (needs both prices): "
        "a comparison whose estimated cost would pass it abstains (kind budget) without a "
        "call. Runs can set a lower limit of their own (oracle.budget_usd).",
    )

    # --- retries (judge) ---
    retry_max_attempts: int = Field(5, ge=1, description="Attempts per call, first included.")
    retry_initial_wait_s: float = Field(0.5, ge=0, description="First backoff wait.")
    retry_max_wait_s: float = Field(20.0, ge=0, description="Longest exponential backoff wait.")
    retry_jitter_s: float = Field(0.5, ge=0, description="Random extra wait, up to this.")
    retry_after_max_s: float = Field(60.0, ge=0, description="Cap on an honoured Retry-After.")

    # --- local reward model ---
    reward_model_path: Path | None = Field(None, description="Local HF model directory.")
    reward_device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1.")
    reward_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on GPU, float32 on CPU."
    )
    reward_tie_margin: float = Field(0.0, ge=0.0, description="|score_a - score_b| <= margin: tie.")
    reward_max_length: int = Field(4096, ge=1, description="Tokens per (prompt, response).")
    reward_text_separator: str = Field("\n\n", description="Joins prompt and response.")
    reward_max_batch_size: int = Field(16, ge=1, description="Pairs per forward pass.")
    reward_max_wait_ms: float = Field(5.0, ge=0, description="Wait to fill a micro-batch.")

    # --- dashboard (/dashboard) ---
    dashboard_refresh_s: float = Field(2.0, gt=0, description="How often the page polls.")
    dashboard_session_hours: float = Field(
        12.0, gt=0, description="A dashboard login lasts this long (then log in again)."
    )
    dashboard_login_failures: int = Field(
        10, ge=1, description="Failed logins a client may make per dashboard_login_window_s; "
        "more are refused (429) without checking the token.",
    )
    dashboard_login_window_s: float = Field(
        60.0, gt=0, description="The window over which failed logins are counted per client."
    )

    # --- /metrics per run ---
    metrics_max_runs: int = Field(
        20, ge=0, description="Most runs with training gauges at /metrics (the most recently "
        "updated active ones), so the number of series stays bounded.",
    )
    metrics_active_s: float = Field(
        900.0, gt=0, description="A run is active (gets gauges) while it has not ended and its "
        "latest iteration summary is younger than this.",
    )

    @model_validator(mode="after")
    def _check_backend_config(self) -> Settings:
        template = self.judge_template
        if template is not None and not all(field in template for field in TEMPLATE_FIELDS):
            raise ValueError(f"judge_template must contain {', '.join(TEMPLATE_FIELDS)}")
        if self.budget_usd is not None and not self.priced:
            raise ValueError("budget_usd needs the judge's prices: set judge_input_usd_per_mtok "
                             "and judge_output_usd_per_mtok (backend judge)")
        if self.backend == "reward_model" and self.reward_model_path is None:
            raise ValueError("backend=reward_model needs reward_model_path")
        if self.item_deadline_s > self.request_deadline_s:
            raise ValueError(
                f"item_deadline_s ({self.item_deadline_s}) cannot exceed request_deadline_s "
                f"({self.request_deadline_s})"
            )
        url = self.store_url.get_secret_value()
        if url and not url.startswith(STORE_SCHEMES):
            raise ValueError("store_url must start with postgresql:// (empty: SQLite at db_path)")
        return self

    @property
    def prompt_template(self) -> str:
        """The judge template in use (built-in one matches the output format)."""
        if self.judge_template is not None:
            return self.judge_template
        return TOKEN_TEMPLATE if self.judge_output_format == "token" else JSON_TEMPLATE

    @property
    def priced(self) -> bool:
        """Judge calls have a known cost: both prices are set and the backend is the judge."""
        return self.backend == "judge" and None not in (
            self.judge_input_usd_per_mtok, self.judge_output_usd_per_mtok)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_token.get_secret_value())

    def judge_key(self) -> str:
        """The judge's API key: judge_api_key, else OPENAI_API_KEY ('' if neither)."""
        return self.judge_api_key.get_secret_value() or os.environ.get("OPENAI_API_KEY", "")

    def secret_values(self) -> list[str]:
        """What no message may show: the judge key, the API token, passwords in URLs."""
        values = [self.judge_key(), self.api_token.get_secret_value()]
        for url in (self.store_url.get_secret_value(), self.judge_base_url):
            password = urlsplit(url).password
            values += [password, unquote(password)] if password else []
        return values

    def assert_safe_to_start(self) -> None:
        """Refuse a weak API token outside dev mode, and a judge without a key."""
        if not self.dev_mode:
            check_token(self.api_token.get_secret_value())
        if self.backend == "judge" and not self.judge_key():
            raise StartupError(
                "backend=judge needs the judge's API key: set COMPO_ORACLE_JUDGE_API_KEY (or "
                "OPENAI_API_KEY; any value, e.g. 'none', for an endpoint without auth), or use a "
                "local reward model: COMPO_ORACLE_BACKEND=reward_model "
                "COMPO_ORACLE_REWARD_MODEL_PATH=/path/to/model"
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_settings = YamlConfigSettingsSource(settings_cls)
        return init_settings, env_settings, dotenv_settings, yaml_settings, file_secret_settings


def check_token(token: str) -> None:
    """Raise InsecureSettingsError for a placeholder, short or low-entropy token."""
    fix = f"make one with: {MAKE_TOKEN} (or COMPO_ORACLE_DEV_MODE=1 for local development)"
    if token.strip().lower() in PLACEHOLDER_TOKENS:
        raise InsecureSettingsError(f"COMPO_ORACLE_API_TOKEN is empty or a placeholder; {fix}")
    bits = token_bits(token)
    if len(token) < MIN_TOKEN_CHARS or bits < MIN_TOKEN_BITS:
        raise InsecureSettingsError(
            f"COMPO_ORACLE_API_TOKEN is too weak ({len(token)} characters, ~{bits:.0f} bits; "
            f"needs >= {MIN_TOKEN_CHARS} characters and >= {MIN_TOKEN_BITS:.0f} bits); {fix}"
        )


def settings_error_line(exc: ValidationError) -> str:
    """A ValidationError of Settings as one line naming each setting and its variable."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if field:
            name = field.split(".")[0]
            message = f"{field} ({ENV_PREFIX}{name.upper()}): {message}"
        problems.append(message)
    return "; ".join(problems)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides > environment > YAML file (if given) > defaults."""
    if config_file is None:
        return Settings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"settings file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)  # a YAMLError names the file and line
    if loaded is not None and not isinstance(loaded, dict):
        kind = type(loaded).__name__
        raise StartupError(f"{path}: settings must be a mapping (name: value), not a {kind}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    return FileSettings(**overrides)
