"""Request body size limit and clear validation errors."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Numeric on purpose: the constant names differ between Starlette versions.
HTTP_413_TOO_LARGE = 413
HTTP_422_INVALID = 422


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
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    lines = [f"{'.'.join(error['loc'])}: {error['msg']}" for error in errors]
    return JSONResponse(
        {"detail": "invalid request: " + "; ".join(lines), "errors": errors},
        HTTP_422_INVALID,
    )


def install(app: FastAPI, max_body_bytes: int) -> None:
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
