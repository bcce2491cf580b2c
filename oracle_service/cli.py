"""Command-line options of the service, shared by `python -m oracle_service` and `compo serve`.

No FastAPI or uvicorn here, so the compo CLI can build its parser without them.
"""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = (
    "ComPO oracle service. Settings: COMPO_ORACLE_* environment variables override the YAML "
    "file; these options override both."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML settings file")
    parser.add_argument("--host", help="override COMPO_ORACLE_HOST")
    parser.add_argument("--port", type=int, help="override COMPO_ORACLE_PORT")
    parser.add_argument("--db-path", help="override COMPO_ORACLE_DB_PATH (SQLite file)")
    parser.add_argument("--log-level", help="override COMPO_ORACLE_LOG_LEVEL")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the options override (options not given are left out)."""
    names = ("host", "port", "db_path", "log_level")
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def parser(prog: str = "python -m oracle_service") -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(built)
    return built
