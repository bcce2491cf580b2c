"""The FastAPI app (lifespan opens storage and backend), `serve(settings)` and `main(argv)`."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import logging.config
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import uvicorn
import yaml
from fastapi import Depends, FastAPI
from pydantic import ValidationError

from oracle_service import __version__, cli, serving
from oracle_service.api import comparisons, dashboard, health, middleware, runs, stats
from oracle_service.api.deps import UNAUTHORIZED, require_token
from oracle_service.api.schema import openapi_schema
from oracle_service.backends import open_backend
from oracle_service.core.comparisons import ComparisonService
from oracle_service.core.metrics import ServiceMetrics
from oracle_service.core.sanitize import register_secrets
from oracle_service.core.settings import (
    Settings,
    StartupError,
    load_settings,
    settings_error_line,
)
from oracle_service.core.store import StoreError
from oracle_service.core.stores import make_store
from oracle_service.core.throttle import LoginThrottle

logger = logging.getLogger("oracle_service")
CONFIG_ERROR_EXIT = 2
STARTUP_FAILURE_EXIT = 3  # as uvicorn.run: the server did not start (e.g. the port is taken)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the store and the backend; close both on shutdown."""
    settings: Settings = app.state.settings
    store = make_store(settings)
    await store.open()
    try:
        backend = await open_backend(settings, app.state.metrics)
    except BaseException:
        await store.close()
        raise
    app.state.store, app.state.backend = store, backend  # the backend: health.py's checks
    app.state.service = ComparisonService(settings, backend, store, app.state.metrics)
    logger.info("oracle service ready: backend=%s store=%s", backend.identity, store.description)
    try:
        yield
    finally:
        key_task = getattr(app.state, "key_task", None)  # health.py's background key check
        if key_task is not None:
            key_task.cancel()
        app.state.service = app.state.backend = None
        app.state.store = None
        await backend.aclose()
        await store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; refuses a weak API token outside dev mode, and a judge without a key."""
    settings = settings if settings is not None else load_settings()
    settings.assert_safe_to_start()
    register_secrets(settings.secret_values())  # no answer or log line shows them
    if not settings.auth_enabled:
        logger.warning("dev mode without COMPO_ORACLE_API_TOKEN: authentication is OFF")
    app = FastAPI(
        title="ComPO oracle service",
        version=__version__,
        description="Pairwise comparisons (LLM judge or reward model) with cache and stats.",
        lifespan=lifespan,
        openapi_url=None,  # served by a route behind auth instead
        docs_url=None,
        redoc_url=None,
    )
    app.openapi = functools.partial(openapi_schema, app, settings)
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.service = None
    app.state.store = None
    app.state.login_throttle = LoginThrottle(
        settings.dashboard_login_failures, settings.dashboard_login_window_s
    )
    middleware.install(app, settings.max_body_bytes)
    protected = [Depends(require_token)]
    app.include_router(health.open_router)
    app.include_router(health.protected_router, dependencies=protected, responses=UNAUTHORIZED)
    for module in (comparisons, stats, runs):
        app.include_router(module.router, dependencies=protected, responses=UNAUTHORIZED)
    app.include_router(dashboard.router)  # its page checks the session itself (login form)
    return app


def serve(settings: Settings) -> None:
    """Run the service with uvicorn until interrupted (what `compo serve` calls): logs
    redacted, no query strings in the access log, request read deadlines (serving.py).

    SIGTERM/Ctrl-C: open requests get shutdown_timeout_s to finish, then are cancelled.
    """
    logging.config.dictConfig(serving.log_config(settings.log_level))
    server = uvicorn.Server(serving.server_config(create_app(settings), settings))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE_EXIT)


async def check_store(settings: Settings) -> None:
    """Open and close the store once, so an unreachable one is a clear startup error."""
    store = make_store(settings)
    await store.open()
    await store.close()


def startup_problem(settings: Settings) -> str | None:
    """What stops these settings from serving, as one line naming the setting; or None."""
    try:
        settings.assert_safe_to_start()
    except StartupError as exc:
        return str(exc)
    path = settings.reward_model_path
    if settings.backend == "reward_model" and path is not None and not path.is_dir():
        return f"COMPO_ORACLE_REWARD_MODEL_PATH={path} is not a model directory"
    try:
        asyncio.run(check_store(settings))
    except StoreError as exc:
        name = "STORE_URL" if settings.store_url.get_secret_value() else "DB_PATH"
        return f"cannot open the store (COMPO_ORACLE_{name}): {exc}"
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return cli.parser().parse_args(argv)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """CLI entry point: parse flags, load and check settings, serve; 2 on a startup problem."""
    args = args if args is not None else parse_args(argv)
    try:
        settings = load_settings(args.config, **cli.overrides(args))
    except ValidationError as exc:
        problem: str | None = settings_error_line(exc)
    except (FileNotFoundError, yaml.YAMLError, StartupError) as exc:
        problem = " ".join(f"settings file: {exc}".split())
    else:
        problem = startup_problem(settings)
    if problem is not None:
        print(f"oracle_service: configuration error: {problem}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    serve(settings)
    return 0
