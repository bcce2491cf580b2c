"""Request body size limit, and errors as one safe line: 422, 503 (store), 500 (a bug);
a client gone before its body was read is no error (no traceback in the log)."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oracle_service.core.sanitize import safe_message
from oracle_service.core.store import StoreError

logger = logging.getLogger(__name__)
# Numeric on purpose: the constant names differ between Starlette versions.
HTTP_405_NOT_ALLOWED = 405
HTTP_413_TOO_LARGE = 413
HTTP_422_INVALID = 422
HTTP_499_CLIENT_GONE = 499  # nginx's code for "the client closed the request"
HTTP_500_INTERNAL = 500
HTTP_503_UNAVAILABLE = 503
MAX_PROBLEMS = 20  # validation problems listed in one 422
MAX_DETAIL_CHARS = 2000  # an error's `detail` line
_PATH_PARAMETER = re.compile(r"\{[^/{}]+\}")  # {run_id} in /v1/runs/{run_id}/stats


def _too_large(max_bytes: int) -> str:
    return f"request body exceeds max_body_bytes={max_bytes}"


class BodySizeLimitMiddleware:
    """413 for bodies over `max_bytes`, by Content-Length or while streaming (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": _too_large(self.max_bytes)}, HTTP_413_TOO_LARGE)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(HTTP_413_TOO_LARGE, _too_large(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 with one readable line per problem, plus the structured list."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [safe_message(part) for part in error.get("loc", ())],
            "msg": safe_message(error.get("msg", "")),
            "type": safe_message(error.get("type", "")),
        }
        for error in exc.errors()[:MAX_PROBLEMS]
    ]
    lines = [f"{'.'.join(error['loc'])}: {error['msg']}" for error in errors]
    return JSONResponse(
        {"detail": "invalid request: " + "; ".join(lines), "errors": errors},
        HTTP_422_INVALID,
    )


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API documents at this path (Starlette's 405 names one route's)."""
    for template, operations in app.openapi()["paths"].items():
        parts = _PATH_PARAMETER.split(template)  # literal, parameter, literal, ...
        pattern = "[^/]+".join(re.escape(literal) for literal in parts)
        if re.fullmatch(pattern, path):
            return sorted(method.upper() for method in operations)
    return []


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own answer, with a complete Allow header on a 405."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == HTTP_405_NOT_ALLOWED:
        methods = allowed_methods(request.app, request.url.path)
        if methods:
            headers["Allow"] = ", ".join(methods)
    detail = safe_message(exc.detail, limit=MAX_DETAIL_CHARS)
    return await http_exception_handler(request, HTTPException(exc.status_code, detail, headers))


async def store_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """503: the store failed, so nothing of this request was recorded (or answered)."""
    logger.error("store failure: %s", exc)
    detail = safe_message(f"store unavailable: {exc}", limit=MAX_DETAIL_CHARS)
    return JSONResponse({"detail": detail}, HTTP_503_UNAVAILABLE)


async def client_gone_handler(request: Request, exc: Exception) -> Response:
    """The client closed the connection (or was cut off) before sending its whole body."""
    logger.debug("%s %s: the client went away before its body was read", request.method,
                 request.url.path)  # fmt: skip
    return Response(status_code=HTTP_499_CLIENT_GONE)


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """500 without internals (the traceback goes to the service log)."""
    return JSONResponse({"detail": "internal error; see the service log"}, HTTP_500_INTERNAL)


def install(app: FastAPI, max_body_bytes: int) -> None:
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(StoreError, store_error_handler)
    app.add_exception_handler(ClientDisconnect, client_gone_handler)
    app.add_exception_handler(Exception, internal_error_handler)
