"""Per-iteration summaries posted to the oracle service (GET /v1/runs/{run_id}/iterations):
the metrics row's figures, the skip threshold, and the service oracle's and Ray's figures
flattened to numbers; the dashboard (/dashboard) draws them.

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
from compo.oracles import report_url
from compo.rundir import mean_change
from oracle_service.client import OracleServiceError, SyncOracleClient
from oracle_service.schemas import RUN_ID_PATTERN, IterationSummary, RunStatus

log = logging.getLogger(__name__)

# metrics-row figures posted as numeric extras of the summary, when present
EXTRA_FIELDS = ("abstained", "ratio", "update_norm", "seconds", "perturbations_per_s")
# figures of the row's "oracle" (service oracle) and "ray" entries, posted as oracle_<name>
# and ray_<name>; each Ray worker's work as worker_per_s.<name>, worker_perturbations.<name>
ORACLE_FIELDS = ("comparisons", "responses", "identical", "identical_share", "ties",
                 "position_inconsistent", "abstained", "base_chars", "perturbed_chars",
                 "generate_s", "compare_s", "cost_usd")
CHECK_FIELDS = ("pairs", "opposite", "b")  # the antithetic signal check: oracle_check_<name>
RAY_FIELDS = ("workers", "dead", "unavailable", "redispatched", "failures", "rejected")
WORKER_FIELDS = ("per_s", "perturbations")
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


def nested_extras(row: dict) -> dict:
    """The row's "oracle" and "ray" figures as flat numbers (what the dashboard shows)."""
    oracle, ray = row.get("oracle") or {}, row.get("ray") or {}
    extras = {f"oracle_{name}": oracle[name] for name in ORACLE_FIELDS if name in oracle}
    check = oracle.get("signal_check") or {}
    extras |= {f"oracle_check_{name}": check[name] for name in CHECK_FIELDS if name in check}
    extras |= {f"ray_{name}": ray[name] for name in RAY_FIELDS if name in ray}
    for worker, work in (ray.get("per_worker") or {}).items():
        extras |= {f"worker_{name}.{worker}": work[name] for name in WORKER_FIELDS}
    return extras


def iteration_summary(row: dict, accept_ratio: float | None = None) -> IterationSummary:
    """A metrics row as the service's IterationSummary (m and n_minus exclude abstentions);
    `accept_ratio`: the run's skip threshold, posted with every summary."""
    extras = {name: row[name] for name in EXTRA_FIELDS if row.get(name) is not None}
    if accept_ratio is not None:
        extras["accept_ratio"] = accept_ratio
    return IterationSummary(
        iteration=row["iteration"], m=row["m"], n_minus=row["n_minus"],
        accepted=row["accepted"], step=row["step"], kept_fraction=row["kept_fraction"],
        logp_chosen_change=mean_change(row["logp_chosen_before"], row["logp_chosen_after"]),
        logp_rejected_change=mean_change(row["logp_rejected_before"],
                                         row["logp_rejected_after"]),
        **extras, **nested_extras(row),
    )


class IterationReporter:
    """Posts each iteration's summary; failures are warnings, counted, and retried later."""

    def __init__(self, base_url: str, run_id: str, token: str | None, timeout_s: float,
                 token_env: str = DEFAULT_TOKEN_ENV, accept_ratio: float | None = None):
        self.base_url, self.run_id = base_url, checked_run_id(run_id)
        self.accept_ratio = accept_ratio
        self._token, self._timeout_s = token, timeout_s
        self.pending: list[IterationSummary] = []
        self.posted = 0
        self.failures = 0
        self.accepted_total = 0  # accepted iterations of the run (the resumed ones included)
        if token is None:
            log.warning("%s is not set: reporting to %s without a token", token_env, base_url)

    def report(self, row: dict) -> dict:
        """Post this row's summary (and any earlier unsent ones); figures for the row."""
        self.accepted_total += bool(row["accepted"])
        try:
            summary = iteration_summary(row, self.accept_ratio).model_dump()
            self.pending.append(IterationSummary.model_validate(
                {**summary, "accepted_total": self.accepted_total}))
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

    def report_status(self, state: str, total: int | None, message: str = "") -> None:
        """Tell the service the run's state (the dashboard's status and progress); a
        failure is a warning."""
        status = RunStatus(state=state, iterations_total=total, message=message)
        try:
            with SyncOracleClient(self.base_url, self._token, timeout_s=self._timeout_s) as client:
                client.report_status(self.run_id, status)
        except REPORT_ERRORS as error:
            log.warning("could not report the run's state (%s) to %s (%s: %s)", state,
                        self.base_url, type(error).__name__, error)


def reporter_for(config: TrainConfig, run_id: str) -> IterationReporter | None:
    """The run's reporter when a service URL is configured, else None."""
    url = report_url(config)
    if url is None:
        return None
    return IterationReporter(url, run_id, service_token(config), config.oracle.report_timeout_s,
                             config.oracle.token_env, config.compo.accept_ratio)
