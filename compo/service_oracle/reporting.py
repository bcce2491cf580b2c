"""Per-iteration summaries posted to the oracle service (GET /v1/runs/{run_id}/iterations).

A failed post is a logged warning counted in the metrics row (`report_failures`), and the
summary is posted again with the next iteration; reporting never stops a run. The bearer
token comes from the environment variable named by `oracle.token_env` and is never logged.
"""

from __future__ import annotations

import logging
import os
import re

import httpx
from pydantic import ValidationError

from compo.config import DEFAULT_TOKEN_ENV, TrainConfig
from compo.errors import ConfigError
from oracle_service.client import OracleServiceError, SyncOracleClient
from oracle_service.schemas import RUN_ID_PATTERN, IterationSummary

log = logging.getLogger(__name__)

# metrics-row figures posted as numeric extras of the summary, when present
EXTRA_FIELDS = ("abstained", "ratio", "update_norm", "seconds", "perturbations_per_s")
# what a failed post can raise: transport problems, HTTP errors, a response that is not valid
REPORT_ERRORS = (httpx.TransportError, OracleServiceError, ValidationError)


def service_token(config: TrainConfig) -> str | None:
    """The service's bearer token from the configured environment variable (None: unset)."""
    return os.environ.get(config.oracle.token_env) or None


def checked_run_id(run_id: str) -> str:
    """The run id, if the service accepts it as a path segment; a ConfigError if not."""
    if re.fullmatch(RUN_ID_PATTERN, run_id) is None:
        raise ConfigError(f"run_id {run_id!r} cannot be used with the oracle service: use "
                          "1-128 letters, digits, '.', '_' or '-'")
    return run_id


def report_url(config: TrainConfig) -> str | None:
    """Where summaries go: oracle_service_url, else the service oracle's own URL."""
    if config.oracle_service_url is not None:
        return config.oracle_service_url
    return config.oracle.service_url if config.oracle.kind == "service" else None


def mean_change(before: list[float], after: list[float]) -> float | None:
    """Mean log-prob change over the iteration's sequences (None when there are none)."""
    if not before:
        return None
    return sum(b - a for a, b in zip(before, after, strict=True)) / len(before)


def iteration_summary(row: dict) -> IterationSummary:
    """A metrics row as the service's IterationSummary (m and n_minus exclude abstentions)."""
    extras = {name: row[name] for name in EXTRA_FIELDS if row.get(name) is not None}
    return IterationSummary(
        iteration=row["iteration"], m=row["m"], n_minus=row["n_minus"],
        accepted=row["accepted"], step=row["step"], kept_fraction=row["kept_fraction"],
        logp_chosen_change=mean_change(row["logp_chosen_before"], row["logp_chosen_after"]),
        logp_rejected_change=mean_change(row["logp_rejected_before"],
                                         row["logp_rejected_after"]),
        **extras,
    )


class IterationReporter:
    """Posts each iteration's summary; failures are warnings, counted, and retried later."""

    def __init__(self, base_url: str, run_id: str, token: str | None, timeout_s: float,
                 token_env: str = DEFAULT_TOKEN_ENV):
        self.base_url, self.run_id = base_url, checked_run_id(run_id)
        self._token, self._timeout_s = token, timeout_s
        self.pending: list[IterationSummary] = []
        self.posted = 0
        self.failures = 0
        if token is None:
            log.warning("%s is not set: reporting to %s without a token", token_env, base_url)

    def report(self, row: dict) -> dict:
        """Post this row's summary (and any earlier unsent ones); figures for the row."""
        try:
            self.pending.append(iteration_summary(row))
            with SyncOracleClient(self.base_url, self._token, timeout_s=self._timeout_s) as client:
                while self.pending:
                    client.report_iteration(self.run_id, self.pending[0])
                    self.pending.pop(0)
                    self.posted += 1
        except REPORT_ERRORS as error:
            self.failures += 1
            log.warning("could not report iteration %d to %s (%s: %s); %d summaries wait for "
                        "the next attempt", row["iteration"], self.base_url,
                        type(error).__name__, error, len(self.pending))
        return {"reported": not self.pending, "report_failures": self.failures,
                "reports_pending": len(self.pending)}


def reporter_for(config: TrainConfig, run_id: str) -> IterationReporter | None:
    """The run's reporter when a service URL is configured, else None."""
    url = report_url(config)
    if url is None:
        return None
    return IterationReporter(url, run_id, service_token(config), config.oracle.report_timeout_s,
                             config.oracle.token_env)
