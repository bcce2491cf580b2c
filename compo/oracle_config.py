"""Which comparison oracle votes in a run, and how generated responses are produced.

likelihood: Definition 3.1 on the preference pair's own responses (in process or on Ray).
service: the policy generates a base response and one response per perturbed output layer;
the oracle service (LLM judge or reward model) compares them. The service URL and its
token (read from an environment variable, never stored in the config) also serve the
per-iteration reports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TOKEN_ENV = "COMPO_ORACLE_API_TOKEN"  # the variable the service itself reads


class OracleConfig(BaseModel):
    """The oracle behind the votes, plus the generation settings of the service oracle."""

    # compo.config.StrictModel's rules; a leaf module, because compo.config imports it
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["likelihood", "service"] = Field(
        "likelihood", description="likelihood: log-probs of the pair's responses; service: "
        "generated responses compared by the oracle service")
    service_url: str | None = Field(
        None, description="comparison service for kind=service; default: oracle_service_url")
    token_env: str = Field(
        DEFAULT_TOKEN_ENV, min_length=1, description="environment variable holding the "
        "service's bearer token (unset: no token is sent)")
    max_new_tokens: int = Field(128, gt=0, description="length limit of generated responses")
    temperature: float = Field(
        0.0, ge=0, description="sampling temperature; 0: greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (temperature > 0)")
    noise: Literal["independent", "shared"] = Field(
        "independent", description="sampling streams (temperature > 0): independent per "
        "(seed, iteration, perturbation); shared: every perturbed response reuses the base "
        "response's stream, so a verdict reflects the perturbation more than sampling luck")
    generation_batch_size: int = Field(
        8, gt=0, description="perturbations generated together (each holds a V x d float32 "
        "direction in memory)")
    requests_in_flight: int = Field(
        4, gt=0, description="comparison requests a process keeps open while it generates "
        "the next batch (each holds one generation batch; overlaps judge latency)")
    request_batch_size: int | None = Field(
        None, gt=0, description="comparisons per HTTP request; default: the service's maximum")
    timeout_s: float = Field(300.0, gt=0, description="time for one comparisons request")
    report_timeout_s: float = Field(
        10.0, gt=0, description="time for posting one iteration summary (a failed report is "
        "a warning, retried with the next iteration)")
