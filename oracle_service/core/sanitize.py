"""The one sanitiser of text that leaves the service (answers and log lines): bounded, valid
Unicode, one line, with the configured secrets and credential-shaped tokens redacted.

`register_secrets` (create_app calls it with the settings' secrets: judge key, API token,
passwords in URLs) makes every later `safe_message` and every log record passed through
`RedactingFilter` redact those values, whatever their shape: a plain hex key has no pattern
to find it by. The patterns catch what nobody configured (keys of other services).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote

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
MIN_SECRET_CHARS = 8  # shorter values ('none', a dev token) would redact ordinary words
PREFIX_FACTOR = 4  # characters looked at per character kept
_registered: set[str] = set()
_longest_first: tuple[str, ...] = ()


def spellings(secret: str) -> set[str]:
    """The secret as it may come back: as is, percent-encoded, JSON- or repr-escaped."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], repr(secret)[1:-1]}


def register_secrets(values: Iterable[str]) -> None:
    """Redact these values (and their escaped spellings) from every message from now on."""
    global _longest_first
    for value in values:
        if len(value) >= MIN_SECRET_CHARS:
            _registered.update(spellings(value))
    _longest_first = tuple(sorted(_registered, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and every credential-looking token replaced."""
    extra = sorted((s for s in secrets if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True)
    for secret in (*extra, *_longest_first):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PATTERNS[1].sub(REDACTED, text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def safe_message(text: object, secrets: Iterable[str] = (), limit: int = MAX_ERROR_CHARS) -> str:
    """One line of valid Unicode, secrets redacted, at most `limit` characters."""
    # Only a bounded prefix is looked at, so a 10 MB upstream body costs nothing. It reaches
    # a whole secret's length past the final cut, and secrets are redacted before that cut,
    # so no part of one is left behind.
    secrets = list(secrets)
    reach = max(map(len, (*secrets, *_longest_first[:1])), default=0)
    line = str(text)[: PREFIX_FACTOR * limit + reach].encode("utf-8", "replace").decode("utf-8")
    line = redact(_CONTROL.sub(" ", line).strip(), secrets)
    if len(line) > limit:
        line = line[: limit - len(ELLIPSIS)] + ELLIPSIS
    return line


class RedactingFilter(logging.Filter):
    """Redacts a record's message, arguments and traceback (put it on every log handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and all(isinstance(a, str | int | float) for a in args):
            # formatters like uvicorn's access log unpack the arguments: keep their shape
            record.msg = redact(str(record.msg))
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        else:
            record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
