"""Settings sources (env over YAML), validation, the CLI, and client import isolation."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from oracle_service.core.settings import (
    InsecureSettingsError,
    Settings,
    StartupError,
    load_settings,
)
from oracle_service.main import main
from oracle_service.testing.processes import free_port, wait_until_ready

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
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        limits = httpx.get(
            f"http://127.0.0.1:{port}/v1/limits", headers={"Authorization": f"Bearer {CLI_TOKEN}"}
        )
        assert limits.json()["backend"] == "judge"
    finally:
        process.terminate()
        process.wait(timeout=30)


def closed_port_url() -> str:
    return f"postgresql://compo:pw-9d8c7b6a@127.0.0.1:{free_port()}/oracle"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"api_token": "changeme"}, "COMPO_ORACLE_API_TOKEN is empty or a placeholder"),
        ({"api_token": "admin"}, "secrets.token_urlsafe(32)"),
        ({"api_token": CLI_TOKEN, "max_batch_size": "0"},
         "max_batch_size (COMPO_ORACLE_MAX_BATCH_SIZE): Input should be greater than or equal"),
        ({"api_token": CLI_TOKEN, "judge_api_key": "", "openai_api_key": ""},
         "set COMPO_ORACLE_JUDGE_API_KEY (or OPENAI_API_KEY"),
        ({"api_token": CLI_TOKEN, "store_url": "closed"},
         "cannot open the store (COMPO_ORACLE_STORE_URL)"),
        ({"api_token": CLI_TOKEN, "item_deadline_s": "100", "request_deadline_s": "50"},
         "item_deadline_s (100.0) cannot exceed request_deadline_s (50.0)"),
        ({"api_token": CLI_TOKEN, "budget_usd": "20"},
         "budget_usd needs the judge's prices: set judge_input_usd_per_mtok"),
        ({"api_token": CLI_TOKEN, "judge_template": "Which is better? {response_a}"},
         "judge_template must contain {prompt}, {response_a}, {response_b}"),
    ],
)  # fmt: skip
def test_every_startup_problem_is_one_line_naming_the_setting(tmp_path, values, expected):
    values = {**values, "port": str(free_port())}
    if values.get("store_url") == "closed":
        values["store_url"] = closed_port_url()
    env = cli_env(tmp_path, **{k: v for k, v in values.items() if k != "openai_api_key"})
    if "openai_api_key" in values:
        env.pop("OPENAI_API_KEY")
    done = subprocess.run([sys.executable, "-m", "oracle_service"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oracle_service: configuration error: ")
    assert expected in lines[0], lines[0]
    assert "pw-9d8c7b6a" not in done.stderr and values["api_token"] not in lines[0][40:]


@pytest.mark.parametrize("token", ["x", "12345", "admin", "a" * 40, "admin123admin123"])
def test_weak_tokens_are_refused_outside_dev_mode(token):
    with pytest.raises(InsecureSettingsError, match=r"secrets\.token_urlsafe\(32\)"):
        Settings(api_token=token, judge_api_key="k").assert_safe_to_start()
    Settings(api_token=token, judge_api_key="k", dev_mode=True).assert_safe_to_start()


@pytest.mark.parametrize(
    "token", [secrets.token_urlsafe(32), secrets.token_hex(16), "correcthorsebatterystaple"]
)
def test_strong_tokens_are_accepted(token):
    Settings(api_token=token, judge_api_key="k").assert_safe_to_start()


def test_a_judge_needs_a_key_a_reward_model_does_not(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(StartupError, match="COMPO_ORACLE_BACKEND=reward_model"):
        Settings(api_token=CLI_TOKEN).assert_safe_to_start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert Settings(api_token=CLI_TOKEN).judge_key() == "sk-from-env"
    monkeypatch.delenv("OPENAI_API_KEY")
    Settings(api_token=CLI_TOKEN, backend="reward_model",
             reward_model_path=tmp_path).assert_safe_to_start()  # fmt: skip


def test_main_reports_configuration_errors(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "settings file not found" in capsys.readouterr().err
    for name, text in (("list.yaml", "- a\n- b\n"), ("broken.yaml", "port: [unclosed\n")):
        (tmp_path / name).write_text(text)
        assert main(["--config", str(tmp_path / name)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and name in error
    bad = tmp_path / "bad.yaml"
    bad.write_text("api_token: a-real-token-123\nmax_batch_size: 0\n")
    assert main(["--config", str(bad)]) == 2
    assert "max_batch_size" in capsys.readouterr().err
