"""The FastAPI app (lifespan opens storage and backend), `serve(settings)` and `main(argv)`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import uvicorn
from fastapi import Depends, FastAPI
from pydantic import ValidationError

from oracle_service import __version__
from oracle_service.api import comparisons, dashboard, health, middleware, runs, stats
from oracle_service.api.deps import require_token
from oracle_service.backends import open_backend
from oracle_service.core.comparisons import ComparisonService
from oracle_service.core.metrics import ServiceMetrics
from oracle_service.core.settings import InsecureSettingsError, Settings, load_settings
from oracle_service.core.stats import StatsBook
from oracle_service.core.store import SQLiteStore

logger = logging.getLogger("oracle_service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the SQLite store and the backend; close both on shutdown."""
    settings: Settings = app.state.settings
    store = SQLiteStore(
        settings.db_path, wal=settings.sqlite_wal, busy_timeout_s=settings.sqlite_busy_timeout_s
    )
    await store.open()
    try:
        backend = await open_backend(settings, app.state.metrics)
    except BaseException:
        await store.close()
        raise
    app.state.store = store
    app.state.service = ComparisonService(
        settings, backend, store, app.state.stats, app.state.metrics
    )
    logger.info("oracle service ready: backend=%s db=%s", backend.identity, settings.db_path)
    try:
        yield
    finally:
        app.state.service = None
        app.state.store = None
        await backend.aclose()
        await store.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; refuses an unsafe API token outside dev mode."""
    settings = settings if settings is not None else load_settings()
    settings.assert_safe_to_start()
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
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.stats = StatsBook(settings.stats_latency_window)
    app.state.service = None
    app.state.store = None
    middleware.install(app, settings.max_body_bytes)
    protected = [Depends(require_token)]
    app.include_router(health.open_router)
    app.include_router(health.protected_router, dependencies=protected)
    for module in (comparisons, stats, runs):
        app.include_router(module.router, dependencies=protected)
    app.include_router(dashboard.router)  # its page checks the session itself (login form)
    return app


def serve(settings: Settings) -> None:
    """Run the service with uvicorn until interrupted (what `compo serve` calls)."""
    logging.basicConfig(level=settings.log_level.upper())
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m oracle_service",
        description="ComPO oracle service. Settings: COMPO_ORACLE_* environment variables "
        "override the YAML file.",
    )
    parser.add_argument("--config", help="YAML settings file")
    parser.add_argument("--host", help="override COMPO_ORACLE_HOST")
    parser.add_argument("--port", type=int, help="override COMPO_ORACLE_PORT")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: parse flags, load settings, serve; 2 on a configuration error."""
    args = parse_args(argv)
    overrides = {
        name: value for name in ("host", "port") if (value := getattr(args, name)) is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
        settings.assert_safe_to_start()
    except (ValidationError, InsecureSettingsError, FileNotFoundError) as exc:
        print(f"oracle_service: configuration error: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0
