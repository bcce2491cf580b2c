"""Low-rank directions in the likelihood oracle and the update: products against the dense
direction, changes and votes against a float64 forward with W + r z, the update's bits for
any split of its rows, the config's refusals and the checkpoint's record of the kind."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compo.config import ComPOConfig, DataConfig, ModelConfig, OracleConfig, TrainConfig
from compo.demo.families import build_family
from compo.directions import DirectionsConfig, low_rank_direction
from compo.directions import products as update_module
from compo.directions.low_rank import low_rank_factors
from compo.directions.products import fused_sums, low_rank_group, product_blocks
from compo.errors import RunError
from compo.estimator import RowShards, decide_from_shards, plan_shards, vote_weighted_rows
from compo.kernels import cpu
from compo.model.conformance import exactness, probe_pairs
from compo.model.head import PLAIN, output_layer
from compo.model.scoring import HeadInputs
from compo.oracle import accumulate, build_state, logit_change
from compo.perturb_config import PerturbConfig
from compo.perturbation import direction_key
from compo.rundir import Checkpoint, RunDirectory

SEED, ITERATION = 5, 2


@pytest.mark.parametrize("rank", [1, 3])
def test_products_equal_the_materialised_direction(rank):
    g = torch.Generator().manual_seed(0)
    hidden, shape = torch.randn(7, 24, generator=g), (300, 24)
    keys = [direction_key(SEED, ITERATION, i) for i in range(4)]
    blocks = list(product_blocks(hidden, keys, shape, rank, budget=7 * 4 * 50))
    assert len(blocks) == 6  # 50 rows a block: never the whole [P, N, V] at once
    ours = torch.cat([products for _, products in blocks], dim=2)  # [P, N, V]
    dense = torch.stack([hidden.double() @ low_rank_direction(key, shape, rank).T
                         for key in keys])
    assert (ours.double() - dense).abs().max() < 1e-5 * dense.abs().max()


def fused_and_torch_sums(rank: int, step: float, tokens: int = 9):
    """(kernel's (at_target, spread), torch path's, float64 reference's, spread's scale
    sum |p expm1(e)|) for a random plain head with V = 3,001 (a partial last block)."""
    g = torch.Generator().manual_seed(rank)
    hidden, weight = torch.randn(tokens, 32, generator=g), torch.randn(3001, 32, generator=g)
    targets = torch.randint(3001, (tokens,), generator=g)
    state = build_state(HeadInputs(hidden, targets, torch.zeros(tokens, dtype=torch.int64), 1),
                        weight / 6, PLAIN, torch.float32)
    keys = [direction_key(SEED, ITERATION, i) for i in range(5)]
    spread, at_target = torch.zeros(5, tokens), torch.zeros(5, tokens)
    for rows, products in product_blocks(hidden, keys, state.shape, rank, 1 << 14):
        accumulate(state, rows, logit_change(products, step, None, None), at_target, spread)
    a, b = low_rank_factors(keys, state.shape, rank)
    u = (hidden @ b.transpose(1, 2) * (step / rank**0.5)).double()  # what the kernel gets
    e = torch.einsum("pnk,pkv->pnv", u, a.double())
    terms = state.probs.double() * torch.expm1(e)
    reference = (e.gather(2, targets.expand(5, -1)[..., None]).squeeze(2), terms.sum(-1))
    kernel = fused_sums(hidden, state.probs, targets, keys, rank, step)
    return kernel, (at_target, spread), reference, terms.abs().sum(-1), e.abs().max()


@pytest.mark.skipif(not cpu.available(), reason="no C compiler: the torch path serves")
@pytest.mark.parametrize(("rank", "step", "widest"), [(1, 2e-3, 0.25), (4, 2e-3, 0.25),
                                                      (16, 0.03, 1.0)])
def test_the_fused_kernel_matches_float64_and_the_torch_path(rank, step, widest):
    kernel, torch_path, reference, scale, largest = fused_and_torch_sums(rank, step)
    assert (largest > 0.25) == (widest > 0.25)  # rank 16: libm's expm1 beyond the polynomial
    assert kernel[1].dtype == torch.float64
    assert ((kernel[1] - reference[1]).abs() / scale).max() < 1e-7  # float32 rounding
    assert ((kernel[1] - torch_path[1].double()).abs() / scale).max() < 1e-6
    assert (kernel[0].double() - reference[0]).abs().max() < 1e-6 * reference[0].abs().max()
    threads = torch.get_num_threads()
    try:  # tokens are split between threads, never the sum over v: the same bits
        for count in (1, 3):
            torch.set_num_threads(count)
            again = fused_and_torch_sums(rank, step)[0]
            assert torch.equal(again[0], kernel[0]) and torch.equal(again[1], kernel[1])
    finally:
        torch.set_num_threads(threads)


def test_oracle_calls_take_at_least_sixteen_low_rank_directions():
    assert low_rank_group(1800, 4, (32000, 4096), 1 << 20) == 16  # not one, as dense blocks
    assert low_rank_group(1800, 4, (384, 64), 1 << 20) == (1 << 20) // (4 * 448)
    assert low_rank_group(5, 4, (384, 64), 1 << 20) == 5


def spy(monkeypatch, module, name: str) -> list:
    """Wraps module.name so each call appends to the returned list (and still runs it)."""
    calls, function = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: calls.append(1) or function(*args))
    return calls


@pytest.mark.parametrize("kernel", [True, False])  # the compiled pass, the torch fallback
@pytest.mark.parametrize("family", ["Llama", "Gemma2", "Phi"])  # plain, soft-cap, bias
@pytest.mark.parametrize("rank", [1, 4])
def test_changes_match_a_float64_forward_and_votes_agree(family, rank, kernel, monkeypatch):
    if kernel and not cpu.available():
        pytest.skip("no C compiler: the torch path serves")
    calls = spy(monkeypatch, cpu, "low_rank_sums")
    if not kernel:
        monkeypatch.setattr(cpu, "available", lambda: False)
    model = build_family(family)
    pairs = probe_pairs(output_layer(model).weight.shape[0])
    config = ComPOConfig(radius=5e-4, block_elements=1 << 12,
                         directions=DirectionsConfig(kind="low_rank", rank=rank))
    base_error, relative, agreement = exactness(model, pairs, config, 24)
    assert base_error < 1e-4 and relative < 1e-3 and agreement == 1.0
    assert bool(calls) == (kernel and family != "Gemma2")  # soft-capped: the torch path


def kept_votes_of(count: int) -> np.ndarray:
    """(index, vote) pairs in index order, abstentions already dropped."""
    votes = np.where(np.random.default_rng(1).random(count) < 0.4, -1, 1)
    return np.stack([np.arange(0, 2 * count, 2), votes], axis=1)


SPLITS = [[(0, 300)], [(0, 64), (64, 300)], [(0, 128), (128, 192), (192, 300)],
          [(0, 100), (100, 101), (101, 300)]]  # the last one not on block boundaries


@pytest.mark.parametrize("amx", [True, False])  # AMX tiles where the CPU has them, float32
@pytest.mark.parametrize("rank", [1, 4])
def test_update_rows_are_bit_identical_for_any_split(rank, amx, monkeypatch):
    if amx and not cpu.amx_ready():
        pytest.skip("needs a CPU with AMX tiles: the float32 GEMMs serve")
    calls = spy(monkeypatch, update_module, "amx_rows")
    if not amx:
        monkeypatch.setattr(cpu, "amx_ready", lambda: False)
    shape, kept = (300, 24), kept_votes_of(40)
    directions = DirectionsConfig(kind="low_rank", rank=rank)

    def rows(a, b):
        return vote_weighted_rows(SEED, ITERATION, kept, shape, range(a, b), None,
                                  directions=directions)

    whole = rows(0, 300)
    for split in SPLITS:
        assert torch.equal(torch.cat([rows(a, b) for a, b in split]), whole), split
    threads = torch.get_num_threads()
    try:  # a Ray worker runs one thread; this process may run more
        torch.set_num_threads(1)
        assert torch.equal(rows(0, 300), whole)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(update_module, "FACTOR_VALUES", 1)  # one group of 16 a pass, not all 40
    assert torch.equal(rows(0, 300), whole)
    dense = sum(vote * low_rank_direction(direction_key(SEED, ITERATION, int(index)), shape,
                                          rank) for index, vote in kept)
    assert (whole.double() - dense).abs().max() < 1e-5 * dense.abs().max()
    gaussian = vote_weighted_rows(SEED, ITERATION, kept, shape, range(300), None)
    assert not torch.allclose(gaussian, whole)  # the family is the config's, not the default
    assert bool(calls) == amx


def test_the_step_is_the_same_from_any_number_of_shards():
    shape, kept = (300, 24), kept_votes_of(40)
    directions = DirectionsConfig(kind="low_rank", rank=2)
    shard = RowShards(lambda rows: vote_weighted_rows(SEED, ITERATION, kept, shape, rows, None,
                                                      directions=directions))
    votes = torch.tensor(kept[:, 1], dtype=torch.int8)
    config = ComPOConfig(num_perturbations=40, accept_ratio=0.1)
    steps = [decide_from_shards(votes, config, shape, plan_shards(300, workers), shard.run)
             for workers in (1, 2, 3)]
    assert steps[0].accepted and steps[0].update.indices.numel() > 0
    for step in steps[1:]:
        assert torch.equal(step.update.indices, steps[0].update.indices)
        assert torch.equal(step.update.values, steps[0].update.values)


LOW_RANK = {"kind": "low_rank", "rank": 4}


def test_what_low_rank_does_not_support_is_refused_with_the_fix():
    with pytest.raises(ValidationError, match="output layer only.*set target: head"):
        ComPOConfig(directions=LOW_RANK, perturb=PerturbConfig(target="mlp", last_layers=2))
    with pytest.raises(ValidationError, match="products: fused.*set products: auto or eager"):
        ComPOConfig(directions=LOW_RANK, products="fused")
    service = TrainConfig(model=ModelConfig(path="m"), data=DataConfig(path="d"),
                          compo=ComPOConfig(directions=LOW_RANK),
                          oracle=OracleConfig(kind="service", service_url="http://judge"))
    assert service.compo.directions.name == "rank4"  # generation has low-rank rows too
    assert ComPOConfig(directions=LOW_RANK).directions.name == "rank4"
    assert ComPOConfig().directions.kind == "gaussian"  # the paper's, by default


def test_resume_refuses_another_direction_family(tmp_path):
    run_dir = RunDirectory(tmp_path / "run").create(ComPOConfig(directions=LOW_RANK))
    run_dir.save_checkpoint(Checkpoint(2, torch.ones(4, 2)), family="rank4")
    assert RunDirectory(run_dir.path).load_checkpoint("rank4").iterations_done == 2
    for other in ("gaussian", "rank2"):
        with pytest.raises(RunError, match=f"started with rank4 directions, the config asks "
                                           f"for {other}.*start a new run"):
            RunDirectory(run_dir.path).load_checkpoint(other)
