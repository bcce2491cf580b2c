"""Fixtures: a fake OpenAI-compatible judge on loopback and real services in front of it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from oracle_service.core.settings import Settings
from oracle_service.main import create_app
from oracle_service.testing.fake_judge import BackgroundServer, FakeJudge
from oracle_service.testing.postgres import PostgresUnavailable, ThrowawayPostgres

TOKEN = "test-token-5d41402abc4b"
JUDGE_KEY = "sk-fake-judge-key"
REQUIRE_POSTGRES = "COMPO_REQUIRE_POSTGRES"  # set by .ci/run: a missing server fails


@dataclass
class JudgeServer:
    judge: FakeJudge
    base_url: str


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a developer's COMPO_ORACLE_* variables."""
    for name in list(os.environ):
        if name.startswith("COMPO_ORACLE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def api_token() -> str:
    return TOKEN


@pytest.fixture
def fake_judge() -> Iterator[JudgeServer]:
    judge = FakeJudge(api_key=JUDGE_KEY)
    with BackgroundServer(judge) as server:
        yield JudgeServer(judge, f"{server.url}/v1")


@pytest.fixture
def make_settings(fake_judge: JudgeServer, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a service in front of the fake judge, with quick retries."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "api_token": TOKEN,
            "judge_base_url": fake_judge.base_url,
            "judge_api_key": JUDGE_KEY,
            "judge_model": "fake-judge",
            "db_path": tmp_path / "oracle.sqlite3",
            "retry_max_attempts": 3,
            "retry_initial_wait_s": 0.01,
            "retry_max_wait_s": 0.05,
            "retry_jitter_s": 0.0,
            "judge_timeout_s": 5.0,
        }
        return Settings(**{**values, **overrides})

    return make


@contextmanager
def _running_service(settings: Settings) -> Iterator[httpx.Client]:
    with BackgroundServer(create_app(settings)) as server:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30.0) as http:
            yield http


@pytest.fixture
def running_service() -> Callable[[Settings], AbstractContextManager[httpx.Client]]:
    """`with running_service(settings) as http:` runs the real app under uvicorn on loopback."""
    return _running_service


@pytest.fixture
def post_compare() -> Callable[[httpx.Client, list[dict]], list[dict]]:
    """POST items to /v1/comparisons, check the status, return the results."""

    def post(http: httpx.Client, items: list[dict]) -> list[dict]:
        response = http.post("/v1/comparisons", json={"items": items})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(items)
        return results

    return post


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """One real PostgreSQL server for the session (initdb + pg_ctl in a temp dir)."""
    try:
        server = ThrowawayPostgres().start()
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRE_POSTGRES):
            pytest.fail(str(exc))
        pytest.skip(f"{exc} (.ci/run installs it and sets {REQUIRE_POSTGRES}=1)")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: ThrowawayPostgres) -> str:
    """A fresh database on the session's server."""
    return postgres_server.new_database()
