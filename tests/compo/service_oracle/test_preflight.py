"""Before a service-oracle run loads its model, `compo train` checks the service, the token
and one canary comparison through the real judge (no cache): each failure is one line,
exit 2, no run directory. The real CLI against the real service and a fake judge."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import yaml

from tests.oracle_service.conftest import JUDGE_KEY
from tests.oracle_service.scripted import TOKEN_ENV, train_config

RUN_TIMEOUT_S = 300  # a guard: each of these fails in seconds


def train(config_path, token: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    return subprocess.run([sys.executable, "-m", "compo.cli", "train", "--config",
                           str(config_path), "--no-progress"], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=env)


def run_file(tmp_path, model_dir, pairs_file, url: str) -> str:
    config = train_config(model_dir, pairs_file, tmp_path, "pre", url)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return str(path)


def one_line(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def no_run_directory(tmp_path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


def test_a_missing_or_wrong_service_token(model_dir, pairs_file, tmp_path, make_settings,
                                          running_service, api_token):
    with running_service(make_settings()) as http:
        config = run_file(tmp_path, model_dir, pairs_file, str(http.base_url))
        missing = train(config, None)
        wrong = train(config, "not-the-token-0123")
    one_line(missing, f"{TOKEN_ENV} is not set", f"export {TOKEN_ENV}=")
    line = one_line(wrong, f"refused the token in {TOKEN_ENV} (HTTP 401)")
    assert "not-the-token-0123" not in line and api_token not in line
    assert no_run_directory(tmp_path)


def test_a_service_that_is_down(model_dir, pairs_file, tmp_path, api_token):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = run_file(tmp_path, model_dir, pairs_file, url)
    one_line(train(config, api_token), f"oracle.service_url={url}",
             "the oracle service does not answer", "compo serve")
    assert no_run_directory(tmp_path)


def test_a_judge_that_rejects_the_key_even_with_every_verdict_cached(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge,
        api_token, post_compare):
    with running_service(make_settings()) as http:
        config = run_file(tmp_path, model_dir, pairs_file, str(http.base_url))
        canary = {"prompt": "What is 2 + 2?", "response_a": "4", "response_b": "5"}
        post_compare(http, [canary])  # the canary's verdict is now cached
        fake_judge.judge.api_key = "sk-rotated"  # the service's key is no longer valid
        assert post_compare(http, [canary])[0]["cached"]  # the cache would hide it
        result = train(config, api_token)
    one_line(result, "failed a canary comparison (auth_error",
             "check COMPO_ORACLE_JUDGE_API_KEY on the service")
    assert JUDGE_KEY not in result.stderr
    assert no_run_directory(tmp_path)
