"""`compo train --ray-address` as a user runs it; the coordinator killed, then --resume."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from compo.fileio import read_tensors
from compo.rundir import RunDirectory
from compo.testhooks import PAUSE_ENV, PAUSED
from compo.train import ComPOTrainer, start_run
from tests.conftest import read_until

SLOW_M = 256  # perturbations per iteration
EPOCHS = 3
ITERATIONS = 4 * EPOCHS  # 4 pairs per epoch
TIMEOUT_S = 300


def compo(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compo.cli", *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=env)


def job_yaml(path, config) -> str:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return str(path)


@pytest.mark.slow
def test_coordinator_killed_then_resumed_matches_the_uninterrupted_run(ray_local, make_config,
                                                                        tmp_path):
    compo_cfg = {"num_perturbations": SLOW_M, "radius": 1e-2, "step_scale": 0.5,
                 "accept_ratio": 0.1}
    config = make_config("cut", {"num_workers": 2}, epochs=EPOCHS, checkpoint_every=1)
    config = config.model_copy(update={
        "compo": config.compo.model_copy(update=compo_cfg),
        "output_dir": str(tmp_path / "runs")})
    reference = config.model_copy(update={"ray": None, "run_id": "reference"})
    expected = ComPOTrainer(reference, start_run(reference)).run(progress=False)

    # the run stops after iteration 2's step, before its checkpoint (compo/testhooks.py)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PAUSE_ENV: "iteration-2:"})
    process = subprocess.Popen(
        [sys.executable, "-m", "compo.cli", "train", "--config", job_yaml(tmp_path / "job.yaml",
         config), "--ray-address", ray_local, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    run_dir = RunDirectory(tmp_path / "runs" / "cut")
    read_until(process.stderr, PAUSED)
    process.send_signal(signal.SIGKILL)  # no chance to save anything
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    done = run_dir.load_checkpoint().iterations_done
    assert done == 2 == checkpointed(run_dir)

    resumed = compo("train", "--resume", str(run_dir.path), "--ray-address", ray_local,
                    "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_tensors(run_dir.path / "final" / "model.safetensors")["lm_head.weight"]
    assert torch.equal(final, expected)
    rows = run_dir.metrics()
    assert [row["iteration"] for row in rows] == list(range(ITERATIONS))
    assert all(row["ray"]["workers"] == 2 for row in rows)
    assert rows[done]["ray"]["update_bytes"] > 0, "the resumed weights were sent as a patch"


def checkpointed(run_dir: RunDirectory) -> int:
    """Iterations the run's last checkpoint holds (0 before the first); reads only the
    commit point, as its weights file may be replaced while the run goes on."""
    if not run_dir.checkpoint_path.exists():
        return 0
    return json.loads(run_dir.checkpoint_path.read_text())["iterations_done"]
