"""Pieces that need no cluster: worker counts, answers, config, what imports without Ray."""

import subprocess
import sys

import numpy as np
import pytest

from compo.config import RayConfig, TrainConfig
from compo.config_files import parse_config
from compo.errors import ConfigError, DistributedError
from workers.placement import failure_reason, plan_workers
from workers.protocol import INDEX_DTYPE, VoteBatch, answer_matches

BASE = {"model": {"path": "m"}, "data": {"path": "d.jsonl"}}


def test_worker_count_follows_the_cluster_or_the_config():
    auto, gpus, cpus = RayConfig(), {"CPU": 128.0, "GPU": 32.0}, {"CPU": 6.0}
    assert plan_workers(gpus, gpus, auto) == (32, True)
    assert plan_workers(gpus, {"CPU": 120.0, "GPU": 31.0}, auto) == (31, True)  # 1 in use
    assert plan_workers(cpus, cpus, auto) == (6, False)
    assert plan_workers(cpus, cpus, RayConfig(cpus_per_worker=2)) == (3, False)
    assert plan_workers(gpus, gpus, RayConfig(num_workers=30)) == (30, True)
    assert plan_workers(gpus, gpus, RayConfig(use_gpu=False)) == (128, False)
    assert plan_workers({"GPU": 1.0}, {"GPU": 1.0}, RayConfig(gpus_per_worker=0.5)) == (2, True)
    assert plan_workers(gpus, gpus, RayConfig(gpus_per_worker=2)) == (16, True)  # spread models


def test_impossible_requests_say_what_to_change():
    with pytest.raises(DistributedError, match="use_gpu is true but the cluster has no GPUs"):
        plan_workers({"CPU": 8.0}, {"CPU": 8.0}, RayConfig(use_gpu=True))
    with pytest.raises(DistributedError, match=r"no free CPUs \(ray.cpus_per_worker=4\)"):
        plan_workers({"CPU": 2.0}, {"CPU": 2.0}, RayConfig(cpus_per_worker=4))
    with pytest.raises(DistributedError, match="no free GPUs for a worker"):
        plan_workers({"GPU": 8.0}, {"GPU": 0.0}, RayConfig())


def test_answers_for_another_round_version_or_chunk_are_rejected():
    def batch(round_id, version, indices, votes=None):
        votes = [1] * len(indices) if votes is None else votes
        return VoteBatch(round_id, version, np.asarray(indices, INDEX_DTYPE).tobytes(),
                         np.asarray(votes, np.int8).tobytes(), 0.1)

    assert answer_matches(batch(3, 2, [4, 5, 6]), 3, 2, range(4, 7))
    assert not answer_matches(batch(3, 1, [4, 5, 6]), 3, 2, range(4, 7))  # stale weights
    assert not answer_matches(batch(2, 2, [4, 5, 6]), 3, 2, range(4, 7))  # an old round
    assert not answer_matches(batch(3, 2, [4, 5, 7]), 3, 2, range(4, 7))  # other indices
    assert not answer_matches(batch(3, 2, [4, 5, 6], [1, -1]), 3, 2, range(4, 7))


def test_ray_section_is_validated_with_field_names():
    config = parse_config(TrainConfig, {**BASE, "ray": {"num_workers": 30,
                                                        "placement_strategy": "SPREAD"}})
    assert config.ray.num_workers == 30 and config.ray.chunk_size == "auto"
    assert parse_config(TrainConfig, BASE).ray is None
    with pytest.raises(ConfigError, match="ray.num_wrkers: unknown key"):
        parse_config(TrainConfig, {**BASE, "ray": {"num_wrkers": 3}})
    with pytest.raises(ConfigError, match="ray.placement_strategy"):
        parse_config(TrainConfig, {**BASE, "ray": {"placement_strategy": "ANYWHERE"}})
    with pytest.raises(ConfigError, match="ray.num_workers"):
        parse_config(TrainConfig, {**BASE, "ray": {"num_workers": 0}})


def test_failure_reason_is_the_original_error():
    error = RuntimeError("The actor died because of an error raised in its creation task\n"
                         "  File x.py, line 3\nModelError: model.path=/x: no config.json there\n")
    assert failure_reason(error) == "ModelError: model.path=/x: no config.json there"
    cuda = RuntimeError("\x1b[36mray::OracleActor.__init__()\x1b[39m\n  File y.py\n"
                        "torch.AcceleratorError: CUDA error: out of memory\n"
                        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")
    assert failure_reason(cuda).startswith("torch.AcceleratorError: CUDA error: out of memory")
    assert failure_reason(RuntimeError("")) == "RuntimeError"


def test_service_oracle_chunks_must_hold_whole_generation_batches():
    service = {"kind": "service", "generation_batch_size": 8}
    with pytest.raises(ConfigError, match=r"ray.chunk_size \(12\) must be a multiple of "
                       r"oracle.generation_batch_size \(8\).*chunk_size: 8"):
        parse_config(TrainConfig, {**BASE, "ray": {"chunk_size": 12}, "oracle": service})
    parse_config(TrainConfig, {**BASE, "ray": {"chunk_size": 16}, "oracle": service})
    parse_config(TrainConfig, {**BASE, "ray": {"chunk_size": 12}})  # likelihood: any size
    parse_config(TrainConfig, {**BASE, "ray": {}, "oracle": service})  # auto: whole batches
    with pytest.raises(ConfigError, match=r"ray.chunk_size"):
        parse_config(TrainConfig, {**BASE, "ray": {"chunk_size": 0}})


def test_the_plain_worker_and_the_chunk_queue_import_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import workers.worker, workers.protocol, workers.dispatch\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
