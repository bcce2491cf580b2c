"""Fixtures for distributed runs: tiny configs, a local Ray instance per module, runners."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, RayConfig, TrainConfig
from compo.train import ComPOTrainer, start_run
from tests.conftest import PAIRS
from tests.oracle_service.conftest import (  # noqa: F401 (the service oracle's fixtures)
    _clean_env,
    api_token,
    fake_judge,
    make_settings,
    running_service,
)

RAY_CPUS = 4  # logical CPUs of the test instance (one per worker, three workers at most)
OBJECT_STORE_BYTES = 150 * 1024 * 1024
# fast fault handling for tests; everything else is RayConfig's documented default. The
# timeouts that declare a worker failed are guards far above what a busy machine needs (on
# 2 cores shared with two busy loops and other jobs, loading a worker took over 120 s): the
# tests that fail a worker do it by events (a kill, a stop), never by a timeout.
TEST_RAY = {"straggler_timeout_s": 5.0, "call_timeout_s": 600.0, "load_timeout_s": 600.0,
            "placement_timeout_s": 300.0, "poll_interval_s": 0.1}


@pytest.fixture(scope="session")
def pairs_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return path


@pytest.fixture(scope="session")
def make_config(model_dir, pairs_path, tmp_path_factory) -> Callable[..., TrainConfig]:
    """A 4-iteration run of the tiny model; `ray` holds RayConfig fields (None: local)."""
    runs = tmp_path_factory.mktemp("runs")

    def make(run_id: str, ray: dict | None = None, **fields) -> TrainConfig:
        compo = ComPOConfig(num_perturbations=64, radius=1e-2, step_scale=0.5,
                            accept_ratio=0.1)
        settings = None if ray is None else RayConfig(**{**TEST_RAY, **ray})
        return TrainConfig(model=ModelConfig(path=str(model_dir)),
                           data=DataConfig(path=str(pairs_path)), compo=compo, seed=3,
                           output_dir=str(runs), run_id=run_id, ray=settings, **fields)

    return make


@pytest.fixture(scope="session")
def local_weights(make_config) -> torch.Tensor:
    """The single-process run every distributed run must reproduce bit for bit."""
    config = make_config("local")
    return ComPOTrainer(config, start_run(config)).run(progress=False)


@pytest.fixture(scope="session")
def train_ray() -> Callable:
    """Run a config on the connected Ray instance; returns (weights, trainer)."""
    from workers.coordinator import ray_trainer

    def train(config: TrainConfig, on_votes: Callable | None = None):
        """on_votes(source, done, total) is called as votes come in."""
        box = {}
        hook = None if on_votes is None else lambda done, total: on_votes(box["s"], done, total)
        trainer = ray_trainer(config, start_run(config), progress=False, on_votes=hook)
        box["s"] = trainer.source
        try:
            return trainer.run(progress=False), trainer
        finally:
            trainer.source.close()

    return train


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for one test module; yields its GCS address."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=RAY_CPUS, object_store_memory=OBJECT_STORE_BYTES,
             include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
