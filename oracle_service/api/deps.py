"""Shared route dependencies: settings, the service, the store, auth (bearer token or
dashboard session)."""

from __future__ import annotations

import hmac
import time
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from oracle_service.core import session
from oracle_service.core.comparisons import ComparisonService
from oracle_service.core.settings import Settings
from oracle_service.core.store import Store
from oracle_service.schemas import ErrorBody, ValidationErrorBody

bearer_scheme = HTTPBearer(auto_error=False, description="COMPO_ORACLE_API_TOKEN")
Model = TypeVar("Model", bound=BaseModel)

# Documented error answers (every one is an ErrorBody: {"detail": "..."}).
UNAUTHORIZED = {401: {"model": ErrorBody, "description": "Missing or wrong bearer token"}}
TOO_LARGE = {413: {"model": ErrorBody, "description": "Body larger than max_body_bytes"}}
INVALID = {422: {"model": ValidationErrorBody, "description": "Invalid request"}}
UNAVAILABLE = {503: {"model": ErrorBody, "description": "Starting up, or the store is down"}}


def json_body(model: type[Model]) -> dict:
    """The OpenAPI request body of a route that parses its body itself (parse_body)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def parse_body(model: type[Model], body: bytes) -> Model:
    """The body as `model`, straight from the bytes; a 422 naming each problem."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_service(request: Request) -> ComparisonService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "service is starting up")
    return service


def get_store(request: Request) -> Store:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "service is starting up")
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[ComparisonService, Depends(get_service)]
StoreDep = Annotated[Store, Depends(get_store)]


SECONDS_PER_HOUR = 3600.0


async def session_valid(request: Request, settings: Settings) -> bool:
    """The request's dashboard session cookie is genuine, not expired, and of the store's
    current session epoch (a logout moves it on); the store is asked only then."""
    max_age_s = settings.dashboard_session_hours * SECONDS_PER_HOUR
    cookie = request.cookies.get(session.COOKIE_NAME)
    token = settings.api_token.get_secret_value()
    epoch = session.session_epoch(cookie, token, time.time(), max_age_s)
    store = getattr(request.app.state, "store", None)
    return epoch is not None and store is not None and epoch == await store.session_epoch()


async def has_session(request: Request, settings: Settings) -> bool:
    """A read (GET/HEAD) carrying a valid dashboard session cookie (core/session.py)."""
    return request.method in session.READ_METHODS and await session_valid(request, settings)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """401 unless the request carries `Authorization: Bearer <COMPO_ORACLE_API_TOKEN>`,
    or is a read with the dashboard's session cookie."""
    settings = get_settings(request)
    if not settings.auth_enabled:
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode(errors="replace") if credentials is not None else b""
    if credentials is not None and hmac.compare_digest(given, expected):
        return
    if not await has_session(request, settings):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
