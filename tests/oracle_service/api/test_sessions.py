"""Dashboard sessions over HTTP: malformed cookies are 401s (never 5xx), logout ends the
session on the server, and failed logins are throttled per client."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle_service.core.session import COOKIE_NAME

PROTECTED_READS = ("/v1/runs", "/v1/stats", "/metrics")
FAILURES_ALLOWED, WINDOW_S = 10, 60  # the defaults of dashboard_login_failures / _window_s
LOGINS = 20


def anonymous(http: httpx.Client, address: str | None = None) -> httpx.Client:
    """A client of the same service without the bearer token (from `address`, via the
    X-Forwarded-For that uvicorn trusts from 127.0.0.1)."""
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.Client(base_url=http.base_url, timeout=30.0, headers=headers)


def log_in(client: httpx.Client, token: str) -> httpx.Response:
    return client.post("/dashboard/login", data={"token": token})


def cookie_header(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE_NAME}={value}"}


def test_a_cookie_of_4301_digits_is_a_401_not_a_500(make_settings, running_service, caplog):
    with running_service(make_settings()) as http, anonymous(http) as client:
        for value in ("9" * 4301, "9" * 4301 + ".abc", "0" * 5000 + "1." + "f" * 64):
            for path in PROTECTED_READS:
                assert client.get(path, headers=cookie_header(value)).status_code == 401, path
            page = client.get("/dashboard", headers=cookie_header(value))
            assert page.status_code == 303  # to the login form
    assert "Traceback" not in caplog.text


COOKIE_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";"),
                      max_size=80)  # what a client can put in a header


def test_fuzzed_cookies_and_headers_never_get_a_5xx(make_settings, running_service):
    with running_service(make_settings()) as http, anonymous(http) as client:

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(COOKIE_TEXT | st.integers(4000, 6000).map(lambda n: "1" + "0" * n), COOKIE_TEXT,
               st.sampled_from([*PROTECTED_READS, "/dashboard"]))  # fmt: skip
        def check(cookie, authorization, path):
            headers = {**cookie_header(cookie.strip()), "Authorization": authorization.strip()}
            response = client.get(path, headers=headers)
            assert response.status_code in (303, 401), (cookie[:60], response.text[:200])

        check()


def test_logout_ends_the_session_on_the_server(make_settings, running_service, api_token):
    with running_service(make_settings()) as http, anonymous(http) as browser:
        assert log_in(browser, api_token).status_code == 303
        copied = browser.cookies[COOKIE_NAME]  # what an attacker might have taken
        assert browser.get("/v1/runs").status_code == 200
        assert browser.post("/dashboard/logout").status_code == 303
        with anonymous(http) as thief:
            assert thief.get("/v1/runs", headers=cookie_header(copied)).status_code == 401
            assert thief.get("/dashboard", headers=cookie_header(copied)).status_code == 303
        assert log_in(browser, api_token).status_code == 303  # a new login works again
        assert browser.get("/v1/runs").status_code == 200


def test_an_anonymous_logout_ends_nobody_s_session(make_settings, running_service, api_token):
    with running_service(make_settings()) as http, anonymous(http) as browser:
        assert log_in(browser, api_token).status_code == 303
        with anonymous(http) as stranger:
            assert stranger.post("/dashboard/logout").status_code == 303
        assert browser.get("/v1/runs").status_code == 200


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_logout_holds_across_a_restart_and_replicas(make_settings, running_service, api_token,
                                                    request, store):
    extra = {"store_url": request.getfixturevalue("postgres_url")} if store == "postgres" else {}
    settings = make_settings(**extra)
    with running_service(settings) as one, running_service(settings) as two:
        with anonymous(one) as browser:
            assert log_in(browser, api_token).status_code == 303
            cookie = browser.cookies[COOKIE_NAME]
            assert browser.post("/dashboard/logout").status_code == 303
        with anonymous(two) as other:
            assert other.get("/v1/runs", headers=cookie_header(cookie)).status_code == 401
    with running_service(settings) as again, anonymous(again) as other:
        assert other.get("/v1/runs", headers=cookie_header(cookie)).status_code == 401


def test_failed_logins_are_throttled_per_client(make_settings, running_service, api_token):
    with running_service(make_settings()) as http:  # the default limits
        with anonymous(http, "10.0.0.1") as guesser, anonymous(http, "10.0.0.2") as other:
            statuses = [log_in(guesser, "not-the-token").status_code for _ in range(LOGINS)]
            assert statuses == [401] * FAILURES_ALLOWED + [429] * (LOGINS - FAILURES_ALLOWED)
            refused = log_in(guesser, api_token)  # the right token is not even tried
            assert refused.status_code == 429 and "set-cookie" not in refused.headers
            assert 0 < int(refused.headers["retry-after"]) <= WINDOW_S
            assert f"dashboard_login_failures={FAILURES_ALLOWED}" in refused.text
            assert log_in(other, api_token).status_code == 303  # another client is not held
    limited = make_settings(dashboard_login_failures=1, dashboard_login_window_s=5)
    with running_service(limited) as http, anonymous(http, "10.0.0.3") as guesser:
        assert [log_in(guesser, "x").status_code for _ in range(2)] == [401, 429]


def test_fuzzed_login_forms_never_get_a_5xx(make_settings, running_service):
    with running_service(make_settings()) as http, anonymous(http) as client:

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(st.binary(max_size=200) | st.text(max_size=60).map(str.encode),
               st.sampled_from(["application/x-www-form-urlencoded", "text/plain", ""]))
        def check(body, content_type):
            response = client.post("/dashboard/login", content=body,
                                   headers={"Content-Type": content_type})  # fmt: skip
            assert response.status_code in (400, 401, 415, 429), response.text[:200]

        check()
