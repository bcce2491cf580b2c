"""The roles on a local Ray instance: the body runs once per iteration, head workers hold
only the moved parameters (their resident memory says so), a killed body is restarted."""

import pytest
import ray
import torch

from compo.data.encoding import load_tokenized
from compo.model.export import fingerprint
from compo.model.loading import ModelConfig, load_tokenizer
from compo.oracle import LikelihoodOracle
from compo.perturbation import block_budget
from compo.votes import LikelihoodVotes, LocalVoteSource
from workers.coordinator import RayVoteSource

pytestmark = pytest.mark.usefixtures("ray_local")
VOCAB, HIDDEN, LAYERS = 2000, 512, 12  # the body holds ~38x the output layer's parameters
# What a head worker of the big model may hold beyond one of the tiny model (measured in the
# same test: imports, threads, allocator arenas, the iteration's state): its masters, the
# direction blocks it works in (a few copies of compo.block_elements floats), and noise.
BLOCK_COPIES, NOISE_BYTES = 6, 32 * 2**20
M = 32


@pytest.fixture(scope="module")
def big_body_dir(tmp_path_factory, tokenizer):
    from compo.demo.tiny import build_llama, save_model

    model = build_llama(VOCAB, hidden=HIDDEN, layers=LAYERS, heads=8, seed=2)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("big_body"))


def run_roles(config) -> tuple[dict, list[dict], torch.Tensor]:
    """Two iterations' votes on a body and 2 head workers: what each role says of itself."""
    pairs = load_tokenized(config.data, load_tokenizer(config.model.path))[0][:2]
    source = RayVoteSource(config, progress=False)
    try:
        master = ray.get(source.body.head_ref).master  # the coordinator's copy, as given
        source.start(master)
        for iteration in (0, 1):
            source.prepare(pairs, master)
            source.votes(3, iteration, list(range(M)))
        body = ray.get(source.body.actor.describe.remote())
        heads = ray.get([w.actor.describe.remote() for w in source.workers])
        assert body["passes"] == 2 == source.body.passes  # once per iteration, for everyone
        assert all(head["holds_model"] is False for head in heads)
        return body, heads, master
    finally:
        source.close()


def test_head_workers_hold_the_moved_parameters_and_never_run_the_body(
        big_body_dir, make_config):
    tiny = make_config("roles-tiny", {"num_workers": 2})
    big = tiny.model_copy(update={"model": ModelConfig(path=str(big_body_dir)),
                                  "run_id": "roles-big"})
    tiny_body, tiny_heads, _ = run_roles(tiny)
    body, heads, master = run_roles(big)
    model_bytes = sum(t.numel() * 4 for t in _tensors(big_body_dir))
    assert model_bytes - master.nbytes >= 10 * master.nbytes  # the body is the bulk
    assert body["resident_bytes"] - tiny_body["resident_bytes"] >= 0.8 * model_bytes
    blocks = BLOCK_COPIES * block_budget(big.compo.block_elements) * 4
    fixed = max(head["resident_bytes"] for head in tiny_heads)
    for head in heads:  # a worker that loaded the model would be ~160 MB above the limit
        assert head["resident_bytes"] - fixed <= 3 * master.nbytes + blocks + NOISE_BYTES, (
            head, fixed)


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors")).values()


def test_a_killed_body_is_restarted_and_the_votes_do_not_change(model_dir, make_config):
    config = make_config("body-killed", {"num_workers": 1})
    tokenizer = load_tokenizer(model_dir)
    pairs = load_tokenized(config.data, tokenizer)[0][:2]
    from compo.model.loading import load_model

    oracle = LikelihoodOracle(load_model(config.model), config.compo, tokenizer.pad_token_id)
    local = LocalVoteSource(LikelihoodVotes(oracle), config.compo)
    weight = local.oracle.scorer.master_weight()
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


@ray.remote(max_restarts=0)
class Dying:
    """Dies while making a head part: its answer can never be had."""

    def part(self):
        import os

        os._exit(1)


def test_a_head_worker_whose_head_part_cannot_be_had_asks_the_body_again(make_config):
    from workers.actor import HeadRef, WorkerActor

    config = make_config("head-lost", {"num_workers": 1})
    source = RayVoteSource(config, progress=False)
    try:
        lost = [Dying.remote().part.remote()]
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(lost[0])
        worker = WorkerActor.options(num_cpus=0).remote(
            config.model, config.compo, "restarted", None, HeadRef(lost, source.body.actor))
        described = ray.get(worker.describe.remote())
        master = ray.get(source.body.head_ref).master
        assert described["holds_model"] is False
        assert described["head_sha256"] == fingerprint(master)
        ray.kill(worker)
    finally:
        source.close()
