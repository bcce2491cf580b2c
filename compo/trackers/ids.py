"""The trackers' own run ids, kept in RUN_DIR/trackers.json so that `--resume` continues
the same W&B / MLflow run instead of starting a new one."""

from __future__ import annotations

import json
from pathlib import Path

from compo import fileio

IDS_FILE = "trackers.json"


def remembered(run_dir: Path, tracker: str) -> str | None:
    """The id `tracker` gave this run before (None: first start)."""
    path = run_dir / IDS_FILE
    return json.loads(path.read_text()).get(tracker) if path.exists() else None


def remember(run_dir: Path, tracker: str, run_id: str) -> None:
    path = run_dir / IDS_FILE
    ids = json.loads(path.read_text()) if path.exists() else {}
    fileio.write_json(path, {**ids, tracker: run_id})
