"""`ray job submit -- compo train ...` on a Ray head started the way clusters start one."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from compo.fileio import read_tensors

TIMEOUT_S = 300
HEAD_CPUS = 4  # the job's entrypoint, the body and two workers
OBJECT_STORE_BYTES = 150 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


AGENT_NOT_READY = "No available agent to submit job"  # Ray: "please try again later"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head --block` with a dashboard (the job server); stopped by its pid."""
    pytest.importorskip("ray")
    bin_dir = Path(sys.executable).parent
    dashboard, gcs = free_port(), free_port()
    # the job's entrypoint runs `compo` from PATH, as for a user with the venv activated
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=path)
    log = (tmp_path_factory.mktemp("head") / "head.log").open("w")
    process = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs}",
         f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
         f"--num-cpus={HEAD_CPUS}", f"--object-store-memory={OBJECT_STORE_BYTES}",
         "--include-dashboard=true", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and not ready(bin_dir, address, env):
        assert process.poll() is None, "ray start --head exited"
        time.sleep(1)
    yield address, bin_dir, env, gcs
    process.send_signal(signal.SIGTERM)  # --block: stops the processes it started
    process.wait(timeout=TIMEOUT_S)
    log.close()
    forget_address(gcs)


def forget_address(port: int) -> None:
    """Remove the 'current cluster' file `ray start` wrote (`ray stop` would, for all
    clusters), so that a later ray.init() on this machine does not look for this one."""
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()


def ready(bin_dir: Path, address: str, env: dict) -> bool:
    probe = subprocess.run([str(bin_dir / "ray"), "job", "list", "--address", address],
                           capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    return probe.returncode == 0


@pytest.mark.slow
def test_ray_job_submit_runs_compo_train(head, make_config, local_weights, tmp_path):
    address, bin_dir, env, _ = head
    config = make_config("job", {"num_workers": 2}).model_copy(
        update={"output_dir": str(tmp_path / "runs")})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [str(bin_dir / "ray"), "job", "submit", "--address", address,
               "--entrypoint-num-cpus", "1", "--", "compo", "train", "--config", str(job),
               "--ray-address", "auto", "--no-progress"]
    deadline = time.time() + TIMEOUT_S
    while True:  # the job server answers `job list` before its agent takes jobs
        result = subprocess.run(command, capture_output=True, text=True, env=env,
                                timeout=TIMEOUT_S)
        if AGENT_NOT_READY not in result.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "run finished" in result.stdout
    head_file = read_tensors(tmp_path / "runs" / "job" / "final" / "model.safetensors")
    assert torch.equal(head_file["lm_head.weight"], local_weights)


@pytest.mark.slow
def test_relative_paths_resolve_where_ray_start_ran(head, tmp_path):
    """deploy/README: a job's command runs in the directory `ray start --head` ran in, not
    in the one `ray job submit` is typed in."""
    address, bin_dir, env, _ = head
    command = [str(bin_dir / "ray"), "job", "submit", "--address", address, "--",
               "python", "-c", "import os; print('cwd=' + os.getcwd())"]
    deadline = time.time() + TIMEOUT_S
    while True:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path,
                                timeout=TIMEOUT_S)
        if AGENT_NOT_READY not in result.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stderr[-3000:]
    [shown] = [line for line in result.stdout.splitlines() if line.startswith("cwd=")]
    assert shown == f"cwd={os.getcwd()}" and os.getcwd() != str(tmp_path)


def test_a_client_without_the_clusters_token_gets_one_line(head, make_config, tmp_path):
    """Token authentication on (RAY_AUTH_MODE=token on the head), and a shell without the
    token: one line naming the variables, no traceback, no run directory."""
    _, bin_dir, env, gcs = head
    config = make_config("no-token", {"num_workers": 1}).model_copy(
        update={"output_dir": str(tmp_path / "runs")})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    shell = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    shell["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    result = subprocess.run([str(bin_dir / "compo"), "train", "--config", str(job),
                             "--ray-address", f"127.0.0.1:{gcs}", "--no-progress"],
                            capture_output=True, text=True, env=shell, timeout=TIMEOUT_S)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "token authentication" in lines[0] and "RAY_AUTH_TOKEN=" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
