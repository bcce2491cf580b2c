"""Settings sources (env over YAML), validation, the CLI, and client import isolation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from oracle_service.core.settings import load_settings
from oracle_service.main import main

REPO_ROOT = Path(__file__).resolve().parents[3]
CLI_TOKEN = "cli-token-8b1d4f9a2c7e5d3b"


def test_yaml_file_with_environment_override(tmp_path, monkeypatch):
    config = tmp_path / "oracle.yaml"
    config.write_text(
        "judge_model: judge-from-yaml\nmax_batch_size: 32\napi_token: yaml-token-123\n"
        "judge_position_mode: both\n"
    )
    monkeypatch.setenv("COMPO_ORACLE_MAX_BATCH_SIZE", "64")
    settings = load_settings(config)
    assert settings.judge_model == "judge-from-yaml"
    assert settings.judge_position_mode == "both"
    assert settings.max_batch_size == 64  # environment beats the file
    assert settings.api_token.get_secret_value() == "yaml-token-123"
    assert "yaml-token-123" not in repr(settings)  # secrets never printed
    assert load_settings(config, max_batch_size=8).max_batch_size == 8  # explicit beats both


def test_yaml_typos_and_bad_values_are_rejected(tmp_path):
    config = tmp_path / "oracle.yaml"
    config.write_text("judge_modle: typo\n")
    with pytest.raises(ValidationError, match="judge_modle"):
        load_settings(config)
    with pytest.raises(ValidationError, match="judge_template must contain"):
        load_settings(judge_template="no placeholders")
    with pytest.raises(ValidationError, match="reward_model_path"):
        load_settings(backend="reward_model")
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_client_and_schemas_import_without_fastapi():
    code = (
        "import sys\n"
        "for name in ('fastapi', 'starlette', 'uvicorn'): sys.modules[name] = None\n"
        "import oracle_service.client, oracle_service.schemas\n"
        "assert 'fastapi' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPO_ORACLE_")}
    env.update({f"COMPO_ORACLE_{k.upper()}": v for k, v in values.items()})
    env.update(COMPO_ORACLE_DB_PATH=str(tmp_path / "cli.sqlite3"), OPENAI_API_KEY="unused")
    return env


def test_python_m_oracle_service_serves(tmp_path):
    port = free_port()
    env = cli_env(tmp_path, api_token=CLI_TOKEN, port=str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "oracle_service"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            assert process.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.2)
        limits = httpx.get(
            f"http://127.0.0.1:{port}/v1/limits", headers={"Authorization": f"Bearer {CLI_TOKEN}"}
        )
        assert limits.json()["backend"] == "judge"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_refuses_placeholder_token(tmp_path):
    env = cli_env(tmp_path, api_token="changeme", port=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "oracle_service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "COMPO_ORACLE_API_TOKEN is empty or a placeholder" in done.stderr
    assert "Traceback" not in done.stderr


def test_main_reports_configuration_errors(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("api_token: a-real-token-123\nmax_batch_size: 0\n")
    assert main(["--config", str(bad)]) == 2
    assert "max_batch_size" in capsys.readouterr().err
