"""Error text that is safe to show: bounded, valid Unicode, one line, secrets redacted."""

from __future__ import annotations

import re
from collections.abc import Iterable

from oracle_service.schemas import MAX_ERROR_CHARS

REDACTED = "[redacted]"
ELLIPSIS = "..."
# Credentials an upstream may echo back: bearer tokens, OpenAI-style keys, key=value pairs.
_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\",;]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)\b(api[_-]?key|token|password|secret)(\s*[=:]\s*)[^\s'\",;&]+"),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MIN_SECRET_CHARS = 4  # shorter "secrets" would redact ordinary words
PREFIX_FACTOR = 4  # characters looked at per character kept


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and every credential-looking token replaced."""
    for secret in sorted((s for s in secrets if len(s) >= _MIN_SECRET_CHARS), key=len)[::-1]:
        text = text.replace(secret, REDACTED)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PATTERNS[1].sub(REDACTED, text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def safe_message(text: object, secrets: Iterable[str] = (), limit: int = MAX_ERROR_CHARS) -> str:
    """One line of valid Unicode, secrets redacted, at most `limit` characters."""
    # Only a bounded prefix is looked at, so a 10 MB upstream body costs nothing; secrets
    # are redacted before the final cut, which must not leave half of one behind.
    line = str(text)[: PREFIX_FACTOR * limit].encode("utf-8", "replace").decode("utf-8")
    line = redact(_CONTROL.sub(" ", line).strip(), secrets)
    if len(line) > limit:
        line = line[: limit - len(ELLIPSIS)] + ELLIPSIS
    return line
