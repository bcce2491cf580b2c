"""The oracles behind the votes: what makes a vote, apart from where it is computed.

An oracle kind is one module with a KIND and one line in ORACLES below. It owns its fields
of the run's `oracle:` section (its `settings` model, composed into compo.config's
OracleConfig), its cross-field checks, and builds its Oracle next to a loaded model;
compo/votes.py (this process) and workers/ (Ray) place any Oracle. Generative kinds vote
on generated responses (every worker holds the model); the others are fed by one body.
"""

from __future__ import annotations

from compo.oracles import likelihood, service
from compo.oracles.base import Oracle, OracleKind, OracleSetup

__all__ = ["ORACLES", "DEFAULT_ORACLE", "Oracle", "OracleKind", "OracleSetup", "kind_of",
           "oracle_kind", "report_url"]

ORACLES: dict[str, OracleKind] = {kind.name: kind for kind in (
    likelihood.KIND,
    service.KIND,
)}
DEFAULT_ORACLE = "likelihood"


def oracle_kind(name: str) -> OracleKind:
    """The registered oracle kind `name`; a ValueError naming the registered ones."""
    if name not in ORACLES:
        raise ValueError(f"oracle.kind {name!r} is not an oracle; use one of "
                         f"{', '.join(ORACLES)}")
    return ORACLES[name]


def kind_of(setup: OracleSetup | None) -> OracleKind:
    """The kind a setup builds (None: the default, built from compo alone)."""
    return oracle_kind(setup.config.oracle.kind if setup is not None else DEFAULT_ORACLE)


def report_url(config) -> str | None:
    """Where iteration summaries go: oracle_service_url, else the oracle's own service."""
    if config.oracle_service_url is not None:
        return config.oracle_service_url
    return oracle_kind(config.oracle.kind).report_url(config)
