"""The plain worker class (no Ray): votes equal the local oracle's, exact versioned patches."""

import pickle

import numpy as np
import pytest
import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, OracleConfig, TrainConfig
from compo.data.encoding import load_tokenized
from compo.errors import ConfigError
from compo.model.loading import load_model, load_tokenizer
from compo.oracle import LikelihoodOracle
from compo.oracles import oracle_kind
from workers.protocol import (
    StaleVersionError,
    VoteBatch,
    WeightChain,
    WeightSnapshot,
    WeightVersions,
    as_pairs,
    pair_ids,
)
from workers.worker import Worker

COMPO = ComPOConfig(num_perturbations=48, radius=1e-2)
SEED, ITERATION = 5, 2


@pytest.fixture(scope="module")
def pairs(model_dir, pairs_path):
    return load_tokenized(DataConfig(path=str(pairs_path)), load_tokenizer(model_dir))[0][:2]


@pytest.fixture
def worker(model_dir):
    return Worker(ModelConfig(path=str(model_dir)), COMPO, "worker-7", "10.0.0.7/abcd")


UNKNOWN_VERSION = -1  # the coordinator's mark of a worker that failed (workers/group.py)


def stepped(weight: torch.Tensor, positions: list[int], delta: float) -> torch.Tensor:
    moved = weight.clone()
    moved.view(-1)[positions] += delta
    return moved


def test_chunked_votes_equal_the_local_oracle_bit_for_bit(worker, model_dir, pairs):
    tokenizer = load_tokenizer(model_dir)
    oracle = LikelihoodOracle(load_model(ModelConfig(path=str(model_dir))), COMPO,
                              tokenizer.pad_token_id)
    state = oracle.prepare(pairs, oracle.master_weight())
    expected = oracle.votes(state, SEED, ITERATION, list(range(48)))

    version, base = worker.prepare(1, 0, pair_ids(pairs))
    assert version == 0 and np.array_equal(base, state.base_logprobs.numpy())
    batches = [worker.evaluate(1, 0, SEED, ITERATION, range(s, s + 16)) for s in (32, 0, 16)]
    got = {int(i): int(v) for b in batches for i, v in zip(b.index_array(), b.vote_array(),
                                                            strict=True)}
    assert [got[i] for i in range(48)] == expected.tolist()
    assert set(expected.tolist()) <= {-1, 1} and len(set(expected.tolist())) == 2


def test_answers_are_compact(worker, pairs):
    worker.prepare(1, 0, pair_ids(pairs))
    batch = worker.evaluate(1, 0, SEED, ITERATION, range(100, 116))
    assert isinstance(batch, VoteBatch) and batch.index_array().tolist() == list(range(100, 116))
    assert len(pickle.dumps(batch, protocol=5)) <= 16 * 16  # <= 16 bytes per perturbation


def test_patches_bring_workers_to_the_coordinators_exact_weights(worker):
    master, loaded = worker.weight.clone(), worker.weight.clone()
    versions = WeightVersions(loaded)
    assert versions.advance(master) is None  # adopted: what the workers loaded, version 0
    versions.watch(torch.tensor([0, 5, 77]))
    assert versions.advance(master) is None  # nothing moved: no new version
    master.view(-1)[[0, 5, 77]] += 1e-3
    step = versions.advance(master)
    assert (step.version, step.base) == (1, 0) and step.indices.dtype == np.int32
    assert step.nbytes == 3 * (4 + 4)
    first = master.clone()
    assert worker.apply(step) == 1 and torch.equal(worker.weight, first)
    assert worker.apply(step) == 1 and torch.equal(worker.weight, first)  # idempotent

    versions.watch(torch.tensor([5, 9]))
    master.view(-1)[[5, 9]] -= 2e-3
    versions.advance(master)
    assert versions.patch_for(2) is None and versions.patch_for(1).base == 1
    chain = versions.patch_for(0)  # two small steps: fewer bytes than the dense layer
    assert isinstance(chain, WeightChain) and [p.version for p in chain.patches] == [1, 2]

    worker.weight, worker.version = loaded.clone(), 0  # a new worker: the layer as loaded
    assert worker.apply(chain) == 2 and torch.equal(worker.weight, master)
    # a failed worker, holding something else entirely
    worker.weight, worker.version = stepped(worker.weight, [3], 5.0), UNKNOWN_VERSION
    with pytest.raises(StaleVersionError, match="holds version -1, the patches go from 1"):
        worker.apply(versions.patch_for(1))
    snapshot = versions.patch_for(UNKNOWN_VERSION)
    assert isinstance(snapshot, WeightSnapshot) and snapshot.nbytes == master.numel() * 4
    assert worker.apply(snapshot) == 2 and torch.equal(worker.weight, master)


def test_requests_for_other_versions_or_rounds_are_refused(worker, pairs):
    worker.prepare(4, 0, pair_ids(pairs))
    with pytest.raises(StaleVersionError, match="holds weights version 0, asked for 1"):
        worker.evaluate(4, 1, SEED, ITERATION, range(4))
    with pytest.raises(StaleVersionError, match=r"prepared \(round, version\) \(4, 0\)"):
        worker.evaluate(3, 0, SEED, ITERATION, range(4))
    with pytest.raises(StaleVersionError):
        worker.prepare(5, 2, pair_ids(pairs))
    versions = WeightVersions(worker.weight.clone())
    worker.apply(versions.advance(stepped(versions.base, [1], 0.5)))
    with pytest.raises(StaleVersionError):  # the cache was built under version 0
        worker.evaluate(4, 1, SEED, ITERATION, range(4))
    assert worker.logprobs(4, 1).shape == (4,)  # hidden states do not depend on W


def test_only_token_ids_travel(pairs):
    ids = pair_ids(pairs)
    assert ids[0] == (pairs[0].prompt_ids, pairs[0].chosen_ids, pairs[0].rejected_ids)
    rebuilt = as_pairs(ids)
    assert [p.chosen_ids for p in rebuilt] == [p.chosen_ids for p in pairs]
    assert rebuilt[0].row == {}


def test_describe_names_the_worker_and_node(worker):
    info = worker.describe()
    assert info["name"] == "worker-7" and info["node"] == "10.0.0.7/abcd"
    assert info["version"] == 0 and info["device"] == "cpu" and len(info["shape"]) == 2


def test_likelihood_worker_has_no_base_responses(worker, pairs):
    worker.prepare(1, 0, pair_ids(pairs))
    with pytest.raises(TypeError, match="only a generative oracle has base responses"):
        worker.base_responses(1, 0, SEED, ITERATION)
    with pytest.raises(StaleVersionError, match="prepared"):
        worker.base_responses(2, 0, SEED, ITERATION)


def test_the_service_oracles_setup_keeps_the_token_out_of_reprs_and_pickles(model_dir, pairs_path,
                                                               monkeypatch):
    config = TrainConfig(model=ModelConfig(path=str(model_dir)),
                         data=DataConfig(path=str(pairs_path)),
                         oracle=OracleConfig(kind="service", service_url="http://oracle:8000",
                                             token_env="COMPO_TEST_WORKER_TOKEN"))
    monkeypatch.setenv("COMPO_TEST_WORKER_TOKEN", "secret-token-93ab61")
    setup = oracle_kind("service").setup(config, "run-1")
    assert setup.token.get_secret_value() == "secret-token-93ab61"
    assert "secret-token-93ab61" not in repr(setup) + str(setup)
    assert pickle.loads(pickle.dumps(setup)).token.get_secret_value() == "secret-token-93ab61"
    monkeypatch.delenv("COMPO_TEST_WORKER_TOKEN")
    assert oracle_kind("service").setup(config, "run-1").token is None
    with pytest.raises(ConfigError, match="run_id"):
        oracle_kind("service").setup(config, "no spaces allowed")


def test_a_generation_worker_spread_by_device_map_generates_the_same_responses(
        model_dir, pairs_path, pairs):
    """ray.gpus_per_worker > 1 loads a generation worker's model with device_map
    (workers/placement.py worker_device); here, without GPUs, every layer is on the CPU."""
    config = TrainConfig(model=ModelConfig(path=str(model_dir)),
                         data=DataConfig(path=str(pairs_path)),
                         oracle=OracleConfig(kind="service", service_url="http://127.0.0.1:9",
                                             max_new_tokens=6, temperature=1.0))
    setup = oracle_kind("service").setup(config, "spread")
    texts = []
    for device in ("cpu", "auto"):
        worker = Worker(ModelConfig(path=str(model_dir), device=device), config.compo,
                        f"gen-{device}", setup=setup)
        worker.prepare(1, 0, pair_ids(pairs))
        base = worker.base_responses(1, 0, SEED, ITERATION)
        texts.append((base, worker.oracle.responses(SEED, ITERATION, range(4))))
    assert texts[0] == texts[1]
    assert any(row[0] != texts[0][0][0] for row in texts[0][1])  # the directions matter


def test_several_gpus_per_worker_are_whole_and_only_for_generation_workers(model_dir,
                                                                          pairs_path):
    from workers.placement import worker_device

    base = {"model": ModelConfig(path=str(model_dir)), "data": DataConfig(path=str(pairs_path))}
    service = OracleConfig(kind="service", service_url="http://127.0.0.1:9")
    two = TrainConfig(**base, oracle=service, ray={"gpus_per_worker": 2})
    assert worker_device(two.ray, use_gpu=True) == "auto"
    assert worker_device(two.ray, use_gpu=False) == "cpu"
    assert worker_device(TrainConfig(**base, ray={}).ray, use_gpu=True) == "cuda"
    with pytest.raises(ValueError, match="head workers .* hold only the moved parameters"):
        TrainConfig(**base, ray={"gpus_per_worker": 2})
    with pytest.raises(ValueError, match="whole number of GPUs"):
        TrainConfig(**base, oracle=service, ray={"gpus_per_worker": 1.5})
