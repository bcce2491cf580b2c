"""Error text shown to clients: bounded, one line of valid Unicode, credentials redacted."""

from __future__ import annotations

import io
import logging

from oracle_service.core.sanitize import (
    REDACTED,
    RedactingFilter,
    register_secrets,
    safe_message,
)
from oracle_service.schemas import MAX_ERROR_CHARS

PLAIN_KEY = "62300af6c1d94e0b8a7f35e2d4c6b9a1e0f2"  # plain hex: no pattern finds it


def test_known_secrets_and_credential_shapes_are_redacted():
    text = ("bad key sk-live-abcdef123456 in 'Authorization: Bearer tok.en-1'; api_key=hunter2"
            " password: swordfish; my-own-secret-value leaked")  # fmt: skip
    safe = safe_message(text, secrets=["my-own-secret-value"])
    for secret in ("sk-live-abcdef123456", "tok.en-1", "hunter2", "swordfish", "my-own-secret"):
        assert secret not in safe
    assert safe.count(REDACTED) == 5
    assert "Authorization: Bearer [redacted]" in safe and "api_key=[redacted]" in safe


def test_messages_are_bounded_single_lines_of_valid_unicode():
    safe = safe_message("line one\nline two\r\n\x00" + "\ud800" + "x" * 10_000_000)
    assert len(safe) == MAX_ERROR_CHARS and safe.endswith("...")
    assert "\n" not in safe and "\x00" not in safe
    safe.encode("utf-8")  # no lone surrogate left
    assert safe.startswith("line one line two ?x")


def test_a_secret_cut_by_the_bound_is_not_left_half_visible():
    secret = "s3cr3t-" + "k" * 40
    safe = safe_message("x" * (MAX_ERROR_CHARS - 20) + secret, secrets=[secret])
    assert "s3cr3t" not in safe and "kkkk" not in safe


def test_registered_secrets_are_redacted_whatever_their_shape_and_spelling():
    unregistered = PLAIN_KEY[::-1]
    assert unregistered in safe_message(f"invalid key {unregistered}")  # no pattern finds it
    register_secrets([PLAIN_KEY, "none"])  # 'none' is too short to be a secret
    for text in (f"invalid key {PLAIN_KEY}", f"key%3D{PLAIN_KEY}!", f"{{'k': '{PLAIN_KEY}'}}"):
        assert PLAIN_KEY not in safe_message(text) and REDACTED in safe_message(text)
    assert safe_message("none of these") == "none of these"
    for offset in range(-len(PLAIN_KEY), 4 * MAX_ERROR_CHARS, 7):  # wherever the cut falls
        safe = safe_message("x" * (MAX_ERROR_CHARS + offset) + PLAIN_KEY)
        assert PLAIN_KEY[:6] not in safe and PLAIN_KEY[-6:] not in safe, offset


def test_the_log_filter_redacts_messages_arguments_and_tracebacks():
    register_secrets([PLAIN_KEY])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.sanitize")
    logger.addHandler(handler)
    try:
        logger.error(f"key {PLAIN_KEY} in the message")
        logger.error("key %s in an argument (%d)", PLAIN_KEY, 7)
        logger.error("an object: %s", ValueError(PLAIN_KEY))
        try:
            raise RuntimeError(f"failed with {PLAIN_KEY}")
        except RuntimeError:
            logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert PLAIN_KEY not in text and text.count(REDACTED) == 4, text
    assert "in an argument (7)" in text and "RuntimeError: failed with [redacted]" in text
