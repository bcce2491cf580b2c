"""Dashboard session cookies: derived from the token, expiring, bound to the token."""

from oracle_service.core.session import new_session, valid_session

TOKEN = "a-long-random-api-token-0123456789"
HOUR = 3600.0


def test_a_session_is_valid_for_its_token_until_it_expires():
    value = new_session(TOKEN, now=1_000_000.0)
    assert TOKEN not in value
    assert valid_session(value, TOKEN, now=1_000_000.0, max_age_s=HOUR)
    assert valid_session(value, TOKEN, now=1_000_000.0 + HOUR, max_age_s=HOUR)
    assert not valid_session(value, TOKEN, now=1_000_000.0 + HOUR + 1, max_age_s=HOUR)
    assert not valid_session(value, TOKEN, now=999_000.0, max_age_s=HOUR)  # from the future
    assert not valid_session(value, TOKEN + "x", now=1_000_000.0, max_age_s=HOUR)


def test_forged_or_malformed_sessions_are_refused():
    issued, signature = new_session(TOKEN, now=1_000_000.0).split(".")
    later = f"{int(issued) + 60}.{signature}"  # a longer life needs a new signature
    flipped = f"{issued}.{signature[:-1]}{'0' if signature[-1] != '0' else '1'}"
    for value in (later, flipped, "", None, issued, f"{issued}.", "x.y", "١٢.abc",
                  f"-5.{signature}"):
        assert not valid_session(value, TOKEN, now=1_000_030.0, max_age_s=HOUR), value
    assert not valid_session(new_session("", 1.0), "", now=1.0, max_age_s=HOUR)  # no token
