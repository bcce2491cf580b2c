"""compo plan's memory figures against what the roles really allocate, at a small shape
whose weights dominate (Llama, hidden 512, 8 layers, vocabulary 32000: 58M parameters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compo.config import TrainConfig
from compo.plan import roles
from compo.plan.estimate import run_of
from compo.plan.shapes import read_shapes

CHILD = Path(__file__).with_name("measure_roles.py")
PAIRS, LENGTH = 4, 24  # completion tokens N = 4 pairs x 2 responses x 24
TOLERANCE = 0.2


@pytest.fixture(scope="module")
def measured(tmp_path_factory, tokenizer) -> tuple[Path, dict]:
    """The saved model and the RSS growth of each role's allocations in a fresh process
    (a warm-up load first: its one-time state is the fixed overhead, reported apart)."""
    from compo.demo.tiny import build_llama, save_model

    path = save_model(build_llama(32000, hidden=512, layers=8, heads=4, seed=0), tokenizer,
                      tmp_path_factory.mktemp("rss_model"))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run([sys.executable, str(CHILD), str(path), str(PAIRS), str(LENGTH),
                             "bfloat16"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return path, json.loads(result.stdout.splitlines()[-1])


def planned(path: Path, tokens: int, block: int | None = None) -> tuple[dict, dict, dict]:
    """The plan's parts for the same shapes: body (1 GPU), coordinator, head worker."""
    config = TrainConfig(model={"path": str(path), "dtype": "bfloat16"},
                         data={"path": "pairs.jsonl"}, batch_size=PAIRS,
                         compo={"block_elements": block})
    shapes, run = read_shapes(str(path)), run_of(config, tokens)
    return (roles.body(shapes, run, 1), roles.coordinator(shapes),
            roles.head_worker(shapes, run, workers=1))


def close(predicted: int, real: int) -> bool:
    return abs(predicted - real) <= TOLERANCE * real


@pytest.mark.slow
def test_body_weights_are_what_load_model_allocates(measured):
    path, grown = measured
    body = planned(path, grown["tokens"])[0]
    assert close(body["weights"], grown["load_model"]), (body, grown)


@pytest.mark.slow
def test_coordinator_master_is_what_master_weight_allocates(measured):
    path, grown = measured
    assert close(planned(path, grown["tokens"])[1]["master"], grown["master"]), grown


@pytest.mark.slow
def test_head_worker_state_is_what_prepare_allocates(measured):
    """Master + OracleState (hidden, probs) of LikelihoodOracle.prepare."""
    path, grown = measured
    head = planned(path, grown["tokens"])[2]
    assert grown["tokens"] == PAIRS * 2 * LENGTH
    assert close(head["hidden"] + head["probs"], grown["state"]), (head, grown)
    assert close(head["master"], grown["master"])


@pytest.mark.slow
def test_head_worker_is_what_the_real_role_allocates(measured):
    """The role itself: a Worker fed by a Body holds its master, the feed and its state."""
    path, grown = measured
    head = planned(path, grown["tokens"])[2]
    assert close(head["master"] + head["hidden"] + head["probs"], grown["head_worker"]), \
        (head, grown)


@pytest.mark.slow
def test_head_worker_direction_blocks_are_the_peak_of_votes(measured):
    """The profiler's peak of the tensors LikelihoodOracle.votes allocates (eager, 4
    directions) against the plan's one block of directions and its products."""
    path, grown = measured
    head = planned(path, grown["tokens"], grown["block"])[2]
    assert close(head["directions"], grown["votes_peak"]), (head, grown)
