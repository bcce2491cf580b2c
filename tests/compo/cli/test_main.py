"""The compo command line, run as a user would (subprocesses)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from compo.cli.main import build_parser
from compo.fileio import read_tensors
from compo.testhooks import PAUSE_ENV, PAUSED
from tests.conftest import read_until

SUBCOMMANDS = ["demo", "split", "train", "probe", "apply-delta", "serve"]


def compo(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compo.cli", *args], capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_every_subcommand_has_help():
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([name, "--help"])
        assert done.value.code == 0


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def train_yaml(tmp_path, model_dir, pairs_file, **compo):
    return write_yaml(tmp_path / "run.yaml", {
        "model": {"path": str(model_dir)}, "data": {"path": str(pairs_file)},
        "compo": {"num_perturbations": 400, "radius": 1e-2, "step_scale": 0.5, **compo},
        "epochs": 3, "checkpoint_every": 1, "output_dir": str(tmp_path / "runs"),
    })


def test_split_then_train_then_apply_delta(tmp_path, model_dir, pairs_file):
    split_cfg = write_yaml(tmp_path / "split.yaml", {
        "model": {"path": str(model_dir)}, "data": {"path": str(pairs_file)},
        "delta": 1000.0, "output_dir": str(tmp_path / "split")})
    result = compo("split", "--config", str(split_cfg))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0]) == {"pairs": 4, "noisy": 4, "clean": 0}
    config = train_yaml(tmp_path, model_dir, tmp_path / "split" / "noisy.jsonl",
                        num_perturbations=32)
    result = compo("train", "--config", str(config), "--run-id", "r1", "--no-progress")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "r1"
    # --no-progress: a log line every 10 iterations (and at the end); a summary in any mode
    progress = [line for line in result.stderr.splitlines() if "compo.progress" in line]
    assert [line.split(": ")[1].split()[1] for line in progress] == ["10/12", "12/12"]
    accepted = sum(json.loads(line)["accepted"] for line in open(run / "metrics.jsonl"))
    summary = result.stdout.splitlines()[-2:]
    assert summary[0] == f"ComPO: {accepted}/12 iterations accepted"
    assert summary[1].startswith("mean change of log pi(y+): ")
    assert summary[1].endswith("(4 trained pairs)") and "mean margin " in summary[1]
    result = compo("apply-delta", "--base", str(model_dir), "--delta",
                   str(run / "delta.safetensors"), "--out", str(tmp_path / "rebuilt"))
    assert result.returncode == 0, result.stderr
    rebuilt = read_tensors(tmp_path / "rebuilt" / "model.safetensors")["lm_head.weight"]
    final = read_tensors(run / "final" / "model.safetensors")["lm_head.weight"]
    assert torch.equal(rebuilt, final)


def test_bad_config_exits_2_with_the_field(tmp_path, model_dir, pairs_file):
    config = train_yaml(tmp_path, model_dir, pairs_file, radius=-1)
    result = compo("train", "--config", str(config))
    assert result.returncode == 2
    assert "compo.radius" in result.stderr and "Traceback" not in result.stderr


def test_ray_refuses_the_options_that_need_the_model_before_any_worker(tmp_path, model_dir,
                                                                       pairs_file):
    config = train_yaml(tmp_path, model_dir, pairs_file, accept_check="trial_step")
    result = compo("train", "--config", str(config), "--ray-address", "auto")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "compo.accept_check: trial_step: not supported on Ray" in result.stderr
    assert not (tmp_path / "runs").exists()  # no run directory was started


def test_ctrl_c_leaves_a_resumable_run_that_matches(tmp_path, model_dir, pairs_file):
    config = train_yaml(tmp_path, model_dir, pairs_file)
    full = compo("train", "--config", str(config), "--run-id", "full", "--no-progress")
    assert full.returncode == 0, full.stderr
    release = tmp_path / "release"  # the paused run goes on once this file exists
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PAUSE_ENV: f"iteration-1:{release}"})
    process = subprocess.Popen(
        [sys.executable, "-m", "compo.cli", "train", "--config", str(config), "--run-id",
         "cut", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    read_until(process.stderr, PAUSED)  # iteration 1 voted and stepped, not saved yet
    process.send_signal(signal.SIGINT)
    read_until(process.stderr, "interrupt: finishing this iteration")
    release.touch()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    assert b"compo train --resume" in stderr
    done = json.loads((tmp_path / "runs" / "cut" / "checkpoint.json").read_text())
    assert done["iterations_done"] == 2  # the interrupted iteration was finished and saved
    resumed = compo("train", "--resume", str(tmp_path / "runs" / "cut"), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    head = "final/model.safetensors"
    a = read_tensors(tmp_path / "runs" / "full" / head)["lm_head.weight"]
    b = read_tensors(tmp_path / "runs" / "cut" / head)["lm_head.weight"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("dashes", [[], ["--"]])
def test_serve_takes_the_service_options_directly(tmp_path, dashes):
    """`compo serve --port N` (and the older `compo serve -- --port N`)."""
    from oracle_service.testing.processes import free_port, service_env, wait_until_ready

    port = free_port()
    settings = {"api_token": "cli-serve-token-4e8a1c7b9d2f", "judge_api_key": "unused"}
    env = service_env(settings, port=0)
    process = subprocess.Popen(
        [sys.executable, "-m", "compo.cli", "serve", *dashes, "--port", str(port),
         "--db-path", str(tmp_path / "oracle.sqlite3")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert (tmp_path / "oracle.sqlite3").is_file()
