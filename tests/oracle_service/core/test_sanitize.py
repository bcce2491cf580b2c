"""Error text shown to clients: bounded, one line of valid Unicode, credentials redacted."""

from __future__ import annotations

from oracle_service.core.sanitize import REDACTED, safe_message
from oracle_service.schemas import MAX_ERROR_CHARS


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
