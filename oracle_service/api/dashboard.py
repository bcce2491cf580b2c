"""/dashboard: a live page of a ComPO run's vote statistics, and its token login.

The page is static (oracle_service/dashboard/, shipped in the package) and reads the JSON
API with the browser's session cookie. A browser logs in by POSTing the API token in a
form body once; it gets back a cookie derived from the token (core/session.py: HttpOnly,
SameSite=Strict), never the token, and never a URL that holds it. Failed logins are
throttled per client (core/throttle.py); logging out moves the store's session epoch on,
which ends every session. URLs here are relative, so the pages also work behind a proxy
that serves the service under a path prefix.
"""

from __future__ import annotations

import hmac
import html
import time
from functools import cache
from importlib.resources import files
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from oracle_service.api.deps import (
    SECONDS_PER_HOUR,
    SettingsDep,
    get_store,
    has_session,
    session_valid,
)
from oracle_service.core import session
from oracle_service.core.settings import Settings
from oracle_service.core.throttle import LoginThrottle

router = APIRouter(prefix="/dashboard", include_in_schema=False)

STATIC_TYPES = {
    "charts.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    # only this origin's scripts, styles and API; no inline script; no framing
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MS_PER_S = 1000
MAX_FORM_FIELDS = 4
WRONG_TOKEN = "That is not the service's API token."
FORM_EXPECTED = "Send the token as an HTML form (application/x-www-form-urlencoded)."


@cache
def asset(name: str) -> str:
    """A file of oracle_service/dashboard/ (read once)."""
    return (files("oracle_service") / "dashboard" / name).read_text(encoding="utf-8")


def page(body: str, status_code: int = status.HTTP_200_OK) -> HTMLResponse:
    return HTMLResponse(body, status_code, headers=SECURITY_HEADERS)


def login_page(message: str = "", status_code: int = status.HTTP_200_OK) -> HTMLResponse:
    return page(asset("login.html").replace("{{message}}", html.escape(message)), status_code)


def redirect(to: str) -> RedirectResponse:
    """303 to a path relative to the current one (See Other: the next request is a GET)."""
    return RedirectResponse(to, status.HTTP_303_SEE_OTHER, headers=SECURITY_HEADERS)


async def logged_in(request: Request, settings: Settings) -> bool:
    """Auth is off (dev mode without a token), or the request has a valid session."""
    return not settings.auth_enabled or await has_session(request, settings)


def client_address(request: Request) -> str:
    """Where the request came from (the proxy's X-Forwarded-For when uvicorn trusts it)."""
    return request.client.host if request.client is not None else "unknown"


def too_many_failures(settings: Settings, wait_s: int) -> HTMLResponse:
    message = (f"Too many failed logins from this address (dashboard_login_failures="
               f"{settings.dashboard_login_failures} per dashboard_login_window_s="
               f"{settings.dashboard_login_window_s:g}); try again in {wait_s} s.")  # fmt: skip
    response = login_page(message, status.HTTP_429_TOO_MANY_REQUESTS)
    response.headers["Retry-After"] = str(wait_s)
    return response


@router.get("")
async def dashboard(request: Request, settings: SettingsDep) -> Response:
    """The page itself, or the login form's address."""
    if not await logged_in(request, settings):
        return redirect("dashboard/login")
    refresh_ms = round(settings.dashboard_refresh_s * MS_PER_S)
    return page(asset("index.html").replace("{{refresh_ms}}", str(refresh_ms)))


@router.get("/login")
async def login_form(settings: SettingsDep) -> Response:
    """The login form (a query string is ignored: a token never travels in a URL)."""
    return redirect("../dashboard") if not settings.auth_enabled else login_page()


async def form_token(request: Request) -> str:
    """The `token` field of a urlencoded form body ('' when absent)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, FORM_EXPECTED)
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, FORM_EXPECTED) from exc
    return fields.get("token", [""])[0]


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    """Check the token from the form (unless this client failed too often lately); on
    success set the session cookie, of the store's current epoch, and go to the page."""
    if not settings.auth_enabled:
        return redirect("../dashboard")
    throttle: LoginThrottle = request.app.state.login_throttle
    client = client_address(request)
    if wait_s := throttle.wait_s(client):
        return too_many_failures(settings, wait_s)
    expected = settings.api_token.get_secret_value()
    given = await form_token(request)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        throttle.failed(client)
        return login_page(WRONG_TOKEN, status.HTTP_401_UNAUTHORIZED)
    throttle.succeeded(client)
    epoch = await get_store(request).session_epoch()
    response = redirect("../dashboard")
    response.set_cookie(
        session.COOKIE_NAME,
        session.new_session(expected, time.time(), epoch),
        max_age=round(settings.dashboard_session_hours * SECONDS_PER_HOUR),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    """End every session (a logged-in browser moves the store's session epoch on) and drop
    the cookie; a request without a valid session ends nobody's."""
    if settings.auth_enabled and await session_valid(request, settings):
        await get_store(request).end_sessions()
    response = redirect("login")
    response.delete_cookie(session.COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    """The page's scripts and style sheet (public: they are the package's own files)."""
    if name not in STATIC_TYPES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard file {name!r}")
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return Response(asset(name), media_type=STATIC_TYPES[name], headers=headers)
