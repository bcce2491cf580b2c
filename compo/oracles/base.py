"""What every oracle kind provides and what a process needs to build one (no registry here:
compo/oracles/__init__.py holds it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from compo.abstentions import Abstentions

# the run's configs and the likelihood oracle are named, not imported: compo.config reads the
# registry to compose the oracle: section, so importing it here would close a cycle
TrainConfig = ModelConfig = ComPOConfig = LikelihoodOracle = Any


class Oracle(Protocol):
    """Votes of one iteration's pairs next to a loaded model (state kept between calls)."""

    scorer: LikelihoodOracle  # the loaded moved layers and the pairs' log-probs

    def prepare(self, pairs: Sequence, weight: torch.Tensor) -> torch.Tensor:
        """Set up an iteration's pairs under `weight`; returns base log-probs [S]."""

    def votes(self, seed: int, iteration: int, indices: Sequence[int]) -> torch.Tensor:
        """Votes (-1 / +1 / 0 abstain) of the given perturbation indices [len(indices)]."""

    def logprobs(self, weight: torch.Tensor) -> torch.Tensor:
        """Log-probs [S] of the prepared pairs under another weight."""

    def metrics(self) -> dict:
        """Extra figures of the last iteration for its metrics.jsonl row."""

    def take_counts(self) -> dict:
        """Counts since the last call, summed over workers by the coordinator ({}: none)."""

    def abstentions(self) -> Abstentions | None:
        """This iteration's abstentions with their cause; None: count the 0 votes."""

    def close(self) -> None:
        """Release what the oracle holds (connections, the prepared state)."""


@dataclass(frozen=True)
class OracleSetup:
    """What a process (this one or a Ray worker) needs to build the run's oracle: the run's
    config, its id, and a token that travels as a SecretStr (never printed)."""

    config: TrainConfig
    run_id: str = "run"
    token: SecretStr | None = field(default=None, repr=False)


class OracleKind(Protocol):
    """One kind of oracle: its settings, checks and how it is built."""

    name: str  # oracle.kind
    generative: bool  # votes on generated responses: every worker holds the model
    settings: type[BaseModel]  # its fields of the oracle: section

    def check(self, config: TrainConfig) -> None:
        """Cross-field rules of a run with this oracle; ValueError with the fix."""

    def setup(self, config: TrainConfig, run_id: str) -> OracleSetup:
        """The setup this process hands to the processes that build the oracle."""

    def build(self, model: Any, tokenizer: Any, model_config: ModelConfig,
              compo: ComPOConfig, setup: OracleSetup | None) -> Oracle:
        """The oracle next to a loaded model (setup None: built from compo alone)."""

    def fed(self, scorer: LikelihoodOracle) -> Oracle:
        """The oracle of a head worker, voting on what the body feeds `scorer` (kinds that
        are not generative: on Ray one body runs the model, head workers hold no model)."""

    def preflight(self, config: TrainConfig, where: str) -> None:
        """Checks of seconds before a model loads (the service reachable, a token)."""

    def report_url(self, config: TrainConfig) -> str | None:
        """Where iteration summaries go when oracle_service_url is unset (None: nowhere)."""

    def counted_metrics(self, counts: dict) -> dict:
        """The metrics of counts summed over workers (take_counts)."""
