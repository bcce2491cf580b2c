"""The roles on a local Ray instance: the body runs once per iteration, head workers hold
only the moved parameters (their resident memory says so), a killed body is restarted."""

import pytest
import ray
import torch

from compo.data.encoding import load_tokenized
from compo.model.loading import ModelConfig, load_tokenizer
from compo.oracle import LikelihoodOracle
from compo.votes import LocalVoteSource
from workers.coordinator import RayVoteSource
from workers.memory import resident_bytes

pytestmark = pytest.mark.usefixtures("ray_local")
VOCAB, HIDDEN, LAYERS = 2000, 512, 12  # the body holds ~40x the output layer's parameters
# what a computing process holds besides the moved parameters, whatever the model: thread
# pools, allocator arenas, direction blocks, the iteration's state (measured: ~60 MB above
# an idle worker with a 4 MB master; a worker holding this model is ~450 MB above it)
FIXED_OVERHEAD = 96 * 2**20
M = 32


@pytest.fixture(scope="module")
def big_body_dir(tmp_path_factory, tokenizer):
    from compo.demo.tiny import build_llama, save_model

    model = build_llama(VOCAB, hidden=HIDDEN, layers=LAYERS, heads=8, seed=2)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("big_body"))


@ray.remote(num_cpus=1)
def bare_resident_bytes() -> int:
    """A worker process that imported what a head worker imports, holding nothing."""
    import workers.actor  # noqa: F401

    return resident_bytes()


def test_head_workers_hold_the_moved_parameters_and_never_run_the_body(
        big_body_dir, make_config):
    config = make_config("roles", {"num_workers": 2})
    config = config.model_copy(update={"model": ModelConfig(path=str(big_body_dir))})
    model_bytes = sum(t.numel() * 4 for t in _tensors(big_body_dir))
    tokenizer = load_tokenizer(big_body_dir)
    pairs = load_tokenized(config.data, tokenizer)[0][:2]
    master = torch.zeros(VOCAB, HIDDEN)
    assert model_bytes - master.nbytes >= 10 * master.nbytes  # the body is the bulk
    source = RayVoteSource(config, progress=False)
    try:
        source.start(source_master(source))
        for iteration in (0, 1):
            source.prepare(pairs, source_master(source))
            source.votes(3, iteration, list(range(M)))
        body = ray.get(source.body.actor.describe.remote())
        heads = ray.get([w.actor.describe.remote() for w in source.workers])
        baseline = ray.get(bare_resident_bytes.remote())
    finally:
        source.close()
    assert body["passes"] == 2 == source.body.passes  # once per iteration, for everyone
    assert body["resident_bytes"] - baseline >= 0.8 * model_bytes  # the measure sees it
    for info in heads:
        assert info["holds_model"] is False
        assert info["resident_bytes"] - baseline <= 3 * master.nbytes + FIXED_OVERHEAD, info


def source_master(source: RayVoteSource) -> torch.Tensor:
    """The float32 output layer the workers were given (the coordinator's copy)."""
    return ray.get(source.body.head_ref).master


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors")).values()


def test_a_killed_body_is_restarted_and_the_votes_do_not_change(model_dir, make_config):
    config = make_config("body-killed", {"num_workers": 1})
    tokenizer = load_tokenizer(model_dir)
    pairs = load_tokenized(config.data, tokenizer)[0][:2]
    from compo.model.loading import load_model

    local = LocalVoteSource(LikelihoodOracle(load_model(config.model), config.compo,
                                             tokenizer.pad_token_id))
    weight = local.oracle.master_weight()
    source = RayVoteSource(config, progress=False).start(weight.clone())
    try:
        source.prepare(pairs, weight)
        first = source.votes(3, 0, list(range(M)))
        ray.kill(source.body.actor, no_restart=False)  # Ray restarts it (ray.max_restarts)
        source.prepare(pairs, weight)
        again = source.votes(3, 1, list(range(M)))
    finally:
        source.close()
    local.prepare(pairs, weight)
    assert torch.equal(first, local.votes(3, 0, list(range(M))))
    assert torch.equal(again, local.votes(3, 1, list(range(M))))
