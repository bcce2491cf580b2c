"""Dashboard sessions: a cookie derived from the API token, so a browser never holds it.

The value is `<epoch>.<issued unix seconds>.<HMAC-SHA256 keyed by the token over both>`:
it proves the browser was given the token once, expires, and stops working as soon as the
token changes or the session epoch moves on (a logout bumps the epoch kept in the store,
which ends every session issued before). It holds nothing secret itself and survives
service restarts. A value is parsed strictly (canonical decimal numbers of bounded length,
64 lowercase hex digits) before any arithmetic, so no cookie can make int() raise.
"""

from __future__ import annotations

import hashlib
import hmac
import re

COOKIE_NAME = "compo_dashboard_session"
_LABEL = b"compo-dashboard-session-v2:"  # domain separation: no other HMAC of the token matches
READ_METHODS = frozenset({"GET", "HEAD"})  # a session authorises reads only (no CSRF writes)
MAX_COOKIE_CHARS = 128  # a valid value is at most ~100 characters
# An epoch of up to 18 digits, unix seconds of up to 12 (until the year 33658), no leading
# zeros or signs, and the hex digest: anything else is refused as it is read.
_VALUE = re.compile(r"(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,11})\.([0-9a-f]{64})")


def _signature(token: str, epoch: int, issued: int) -> str:
    message = _LABEL + f"{epoch}.{issued}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def new_session(token: str, now: float, epoch: int = 0) -> str:
    """A cookie value for a browser that has just shown the token, in session `epoch`."""
    issued = int(now)
    return f"{epoch}.{issued}.{_signature(token, epoch, issued)}"


def session_epoch(value: str | None, token: str, now: float, max_age_s: float) -> int | None:
    """The epoch of a value made by new_session with this token at most max_age_s ago;
    None for anything else (the caller compares the epoch with the store's)."""
    if not value or not token or len(value) > MAX_COOKIE_CHARS:
        return None
    match = _VALUE.fullmatch(value)
    if match is None:
        return None
    epoch, issued, signature = int(match[1]), int(match[2]), match[3]
    if not 0 <= now - issued <= max_age_s:
        return None
    if not hmac.compare_digest(signature, _signature(token, epoch, issued)):
        return None
    return epoch


def valid_session(
    value: str | None, token: str, now: float, max_age_s: float, epoch: int = 0
) -> bool:
    """True for a value made by new_session with this token in `epoch`, not expired."""
    return session_epoch(value, token, now, max_age_s) == epoch
