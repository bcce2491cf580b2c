"""oracle.kind likelihood (Definition 3.1): a pair improves when log pi(y+) rises and
log pi(y-) falls under the perturbed weights, computed exactly from the body's hidden
states (compo/oracle.py); on Ray one body feeds head workers (workers/body.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from compo.oracles.base import OracleSetup
from compo.plugins import resolve


class LikelihoodSettings(BaseModel):
    """No fields of its own: compo.radius, compo.products and compo.perturb drive it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LikelihoodKind:
    """The exact likelihood oracle; placed as a body plus head workers on Ray."""

    name, generative, settings = "likelihood", False, LikelihoodSettings

    def check(self, config: Any) -> None:
        """Every target and option works with it: nothing to refuse."""

    def setup(self, config: Any, run_id: str) -> OracleSetup:
        return OracleSetup(config, run_id)

    def build(self, model: Any, tokenizer: Any, model_config: Any, compo: Any,
              setup: OracleSetup | None) -> Any:
        scorer = resolve("compo.oracle:LikelihoodOracle")(
            model, compo, tokenizer.pad_token_id, model_config.batch_size)
        return self.fed(scorer)

    def fed(self, scorer: Any) -> Any:
        return resolve("compo.votes:LikelihoodVotes")(scorer)

    def preflight(self, config: Any, where: str) -> None:
        """Nothing outside the process to check."""

    def report_url(self, config: Any) -> str | None:
        return None

    def counted_metrics(self, counts: dict) -> dict:
        return {}


KIND = LikelihoodKind()
