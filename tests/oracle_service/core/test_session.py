"""Dashboard session cookies: derived from the token, expiring, bound to the token and to
the session epoch, parsed strictly."""

from oracle_service.core.session import new_session, session_epoch, valid_session

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
    epoch, issued, signature = new_session(TOKEN, now=1_000_000.0).split(".")
    later = f"{epoch}.{int(issued) + 60}.{signature}"  # a longer life needs a new signature
    flipped = f"{epoch}.{issued}.{signature[:-1]}{'0' if signature[-1] != '0' else '1'}"
    for value in (later, flipped, "", None, issued, f"{epoch}.{issued}.", "x.y.z",
                  f"0.١٢.{signature}", f"0.-5.{signature}", f"{issued}.{signature}"):
        assert not valid_session(value, TOKEN, now=1_000_030.0, max_age_s=HOUR), value
    assert not valid_session(new_session("", 1.0), "", now=1.0, max_age_s=HOUR)  # no token


def test_malformed_cookies_are_refused_before_any_arithmetic():
    """Over-long, signed, padded or non-canonical numbers never reach int() (4,301 digits
    made it raise), and leading zeros do not make a second spelling of a valid session."""
    value = new_session(TOKEN, now=1_000_000.0)
    head, _, signature = value.rpartition(".")
    for bad in ("9" * 4301 + "." + signature, "0" + value, f"00.{value}", f"+{value}",
                f" {value}", f"{value}\n", value.upper(), value + "0", "1" * 10_000,
                "." * 3, f"{head}..{signature}", f"{head}.{signature}.x"):
        assert not valid_session(bad, TOKEN, now=1_000_030.0, max_age_s=HOUR), bad[:40]


def test_a_session_belongs_to_its_epoch():
    value = new_session(TOKEN, now=1_000_000.0, epoch=3)
    assert session_epoch(value, TOKEN, now=1_000_000.0, max_age_s=HOUR) == 3
    assert valid_session(value, TOKEN, now=1_000_000.0, max_age_s=HOUR, epoch=3)
    assert not valid_session(value, TOKEN, now=1_000_000.0, max_age_s=HOUR, epoch=4)
    _, issued, signature = value.split(".")
    assert session_epoch(f"4.{issued}.{signature}", TOKEN, 1_000_000.0, HOUR) is None
