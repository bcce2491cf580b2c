"""Dashboard sessions: a cookie derived from the API token, so a browser never holds it.

The value is `<issued unix seconds>.<HMAC-SHA256 keyed by the token over the issue time>`:
it proves the browser was given the token once, expires, and stops working as soon as the
token changes. It holds nothing secret itself and survives service restarts.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE_NAME = "compo_dashboard_session"
_LABEL = b"compo-dashboard-session-v1:"  # domain separation: no other HMAC of the token matches
READ_METHODS = frozenset({"GET", "HEAD"})  # a session authorises reads only (no CSRF writes)


def _signature(token: str, issued: int) -> str:
    return hmac.new(token.encode(), _LABEL + str(issued).encode(), hashlib.sha256).hexdigest()


def new_session(token: str, now: float) -> str:
    """A cookie value for a browser that has just shown the token."""
    issued = int(now)
    return f"{issued}.{_signature(token, issued)}"


def valid_session(value: str | None, token: str, now: float, max_age_s: float) -> bool:
    """True for a value made by new_session with this token, at most max_age_s old."""
    if not value or not token:
        return False
    issued_text, _, signature = value.partition(".")
    if not (issued_text.isascii() and issued_text.isdigit()):
        return False
    issued = int(issued_text)
    if not 0 <= now - issued <= max_age_s:
        return False
    return hmac.compare_digest(signature.encode(), _signature(token, issued).encode())
