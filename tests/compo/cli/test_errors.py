"""Every common mistake is one line through the real CLI (exit 2, no traceback), found
before a model loads, and leaves no run directory behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

RUN_TIMEOUT_S = 300  # a guard: each of these fails in seconds
HIDE_MODULES = '''import sys
HIDDEN = {modules!r}


class Hidden:  # as if the modules were not installed
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Hidden)
'''


def compo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compo.cli", *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env=env)


def one_line(result: subprocess.CompletedProcess, *expected: str, code: int = 2) -> str:
    """The single stderr line of a failed command, which names every `expected` text."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def hiding(tmp_path, *modules: str) -> dict:
    """An environment whose Python cannot import `modules` (a sitecustomize shim)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(HIDE_MODULES.format(modules=set(modules)))
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def run_yaml(tmp_path, model, pairs, **extra) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": str(model)}, "data": {"path": str(pairs)},
                                    "compo": {"num_perturbations": 8}, "max_iterations": 2,
                                    "output_dir": str(tmp_path / "runs"), **extra}))
    return str(path)


def no_run_directory(tmp_path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_wrong_model_path(tmp_path, pairs_file):
    config = run_yaml(tmp_path, tmp_path / "no-such-model", pairs_file)
    one_line(compo("train", "--config", config), f"{config}: model.path=",
             "no such directory", "save_pretrained")
    assert no_run_directory(tmp_path)


def test_a_directory_without_a_model(tmp_path, pairs_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = run_yaml(tmp_path, empty, pairs_file)
    one_line(compo("train", "--config", config), "model.path=", "no config.json")
    assert no_run_directory(tmp_path)


def test_a_model_directory_without_a_tokenizer(tmp_path, model_dir, pairs_file):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    config = run_yaml(tmp_path, bare, pairs_file)
    one_line(compo("train", "--config", config), "model.path=", "tokenizer",
             "tokenizer.save_pretrained")
    assert no_run_directory(tmp_path)


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    one_line(compo("train", "--resume", str(tmp_path)), f"--resume {tmp_path}",
             "not a run directory")
    one_line(compo("train", "--resume", str(tmp_path / "gone")), "no such directory")


def test_an_unreachable_ray_address(tmp_path, model_dir, pairs_file):
    config = run_yaml(tmp_path, model_dir, pairs_file)
    address = f"127.0.0.1:{closed_port()}"
    one_line(compo("train", "--config", config, "--ray-address", address),
             f"--ray-address={address}", "no Ray cluster answers there", "ray start --head")
    assert no_run_directory(tmp_path)


def test_a_bad_data_row_leaves_no_run_directory(tmp_path, model_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": " a"}\n')  # no rejected response
    config = run_yaml(tmp_path, model_dir, pairs)
    one_line(compo("train", "--config", config), f"{pairs}:1")
    assert no_run_directory(tmp_path)  # the run directory made for it was removed


def test_plot_without_matplotlib(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"iteration": 0}) + "\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"compo": {"accept_ratio": 0.2}}))
    result = compo("plot", str(tmp_path), env=hiding(tmp_path, "matplotlib"))
    one_line(result, "matplotlib", "pip install 'compo[train]'")


def test_serve_without_the_service_extra(tmp_path):
    result = compo("serve", "--port", "0", env=hiding(tmp_path, "fastapi", "uvicorn"))
    one_line(result, "pip install 'compo[service]'")


def test_debug_shows_the_traceback(tmp_path):
    result = compo("--debug", "train", "--resume", str(tmp_path))
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "RunError" in result.stderr


def test_ray_refusals_name_the_cause():
    from compo.cli.errors import ray_refusal

    # what Ray 2.5x gives for a client without the cluster's token: a bare ConnectionError,
    # the reason only in its C++ client's stderr (tests/workers/test_job_submit.py: for real)
    refused = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    logged = ("[W gcs_client.cc:210] Failed to get cluster ID from GCS server: "
              "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing "
              "or incorrect\n")
    token = str(ray_refusal(refused, "10.0.0.1:6379", logged))
    assert "token authentication" in token and "RAY_AUTH_TOKEN=" in token
    assert "RAY_AUTH_MODE=token" in token and "10.0.0.1:6379" in token
    down = str(ray_refusal(ConnectionError("Could not find any running Ray instance.\nx"), None))
    assert down.startswith("could not connect to Ray at auto (Could not find any running")
    assert "\n" not in down and "token" not in down


@pytest.mark.parametrize("module, extra", [("matplotlib.figure", "train"), ("ray", "ray"),
                                           ("triton.language", "gpu"), ("httpx", "service")])
def test_missing_extras_name_their_pip_command(module, extra):
    from compo.cli.errors import missing_extra

    error = ModuleNotFoundError(f"No module named {module!r}", name=module)
    assert missing_extra(error).endswith(f"pip install 'compo[{extra}]'")
    assert missing_extra(ModuleNotFoundError("x", name="no_such_thing")) is None
