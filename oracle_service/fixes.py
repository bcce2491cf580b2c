"""What to do about each kind of abstention: one hint per ErrorKind, naming the service's
setting. Shared by the service's readiness check and the ComPO client's messages (no
dependencies beyond the wire schema)."""

from __future__ import annotations

from oracle_service.schemas import ErrorKind

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
