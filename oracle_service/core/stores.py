"""`make_store(settings)`: the configured store, SQLite or PostgreSQL (not opened yet)."""

from __future__ import annotations

from oracle_service.core.settings import Settings
from oracle_service.core.store import Store


def make_store(settings: Settings) -> Store:
    """PostgreSQL when store_url is set, else SQLite at db_path."""
    url = settings.store_url.get_secret_value()
    if url:
        from oracle_service.core.store_postgres import PostgresStore  # asyncpg only when used

        return PostgresStore(url, settings.store_pool_size, settings.store_timeout_s)
    from oracle_service.core.store_sqlite import SQLiteStore

    return SQLiteStore(
        settings.db_path, wal=settings.sqlite_wal, busy_timeout_s=settings.sqlite_busy_timeout_s
    )
