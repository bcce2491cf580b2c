"""Before a service-oracle run loads its model: the service answers, takes the token, and
its backend answers one canary comparison (GET /v1/preflight: a real judge call with the
service's key, no cache). A failure is one line naming the cause and the fix, in seconds."""

from __future__ import annotations

import httpx

from compo.config import TrainConfig
from compo.errors import JudgeError
from compo.service_oracle.reporting import service_token
from oracle_service.client import OracleServiceError, SyncOracleClient

PREFLIGHT_TIMEOUT_S = 60.0  # the canary is one judge call, with the service's retries
UNAUTHORIZED, NOT_FOUND = 401, 404


def preflight(config: TrainConfig, where: str) -> None:
    """Raise JudgeError (one line, `where`: the config file) unless the service is ready."""
    url = config.oracle.service_url or config.oracle_service_url
    if url is None:
        raise JudgeError(f"{where}: oracle.kind: service needs oracle.service_url (the "
                         "comparison service's base URL, e.g. http://127.0.0.1:8000)")
    token = service_token(config)
    try:
        with SyncOracleClient(url, token, timeout_s=PREFLIGHT_TIMEOUT_S) as client:
            answer = client.preflight()
    except httpx.TransportError as error:
        raise JudgeError(f"{where}: oracle.service_url={url}: the oracle service does not "
                         f"answer ({type(error).__name__}: {error}); start it (compo serve) "
                         "or fix oracle.service_url") from None
    except OracleServiceError as error:
        raise JudgeError(refusal(error, url, config.oracle.token_env, token)) from None
    if not answer.get("ok"):
        raise JudgeError(f"the oracle service at {url}: its {answer.get('backend', 'backend')} "
                         f"failed a canary comparison ({answer.get('kind')}: "
                         f"{answer.get('detail')}): {answer.get('fix')}")


def refusal(error: OracleServiceError, url: str, token_env: str, token: str | None) -> str:
    """One line for an HTTP error of the preflight request."""
    if error.status_code == UNAUTHORIZED and token is None:
        return (f"the oracle service at {url} needs a token and {token_env} is not set: "
                f"export {token_env}=<the service's COMPO_ORACLE_API_TOKEN> (oracle.token_env "
                "names the variable)")
    if error.status_code == UNAUTHORIZED:
        return (f"the oracle service at {url} refused the token in {token_env} (HTTP 401): "
                "set it to the service's COMPO_ORACLE_API_TOKEN")
    if error.status_code == NOT_FOUND:
        return (f"{url} has no /v1/preflight (HTTP 404): is oracle.service_url a ComPO oracle "
                "service (compo serve) of this version?")
    return f"the oracle service at {url} answered HTTP {error.status_code}: {error.detail}"
