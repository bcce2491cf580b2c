import json

import pytest
import torch

from compo import deltalog, fileio
from compo.config import ComPOConfig
from compo.errors import RunError
from compo.perturbation import GENERATOR
from compo.rundir import Checkpoint, RunDirectory


def test_a_checkpoint_of_other_directions_is_refused(tmp_path):
    run_dir = RunDirectory(tmp_path / "run").create(ComPOConfig())
    run_dir.save_checkpoint(Checkpoint(3, torch.ones(4, 2)))
    state = json.loads(run_dir.checkpoint_path.read_text())
    assert state["directions"] == GENERATOR
    assert torch.equal(run_dir.load_checkpoint().weight, torch.ones(4, 2))
    del state["directions"]  # what a checkpoint of the generator before #11 looks like
    run_dir.checkpoint_path.write_text(json.dumps(state))
    with pytest.raises(RunError, match="started with other directions.*start a new run"):
        run_dir.load_checkpoint()


SHAPE = (200, 100)  # 20,000 entries: a dense master is 80,000 bytes
KEPT = 400  # entries per step: 2%


def stepped(weight: torch.Tensor, seed: int) -> torch.Tensor:
    """A ComPO-like sparse step in place; returns the positions it changed."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randperm(weight.numel(), generator=generator)[:KEPT]
    weight.view(-1).index_add_(0, positions, torch.randn(KEPT, generator=generator))
    return positions


def logged_run(path, iterations: int, dense_every: int = 100) -> tuple[RunDirectory, list]:
    """A run directory after `iterations` sparse steps, a commit after each; the weights
    after every iteration."""
    run_dir = RunDirectory(path).create(ComPOConfig())
    weight = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    run_dir.save_checkpoint(Checkpoint(0, weight), dense_every)
    history = [weight.clone()]
    for iteration in range(iterations):
        run_dir.append_delta(iteration, stepped(weight, iteration + 1), weight)
        run_dir.save_checkpoint(Checkpoint(iteration + 1, weight), dense_every)
        history.append(weight.clone())
    return run_dir, history


def test_resume_replays_the_delta_log_bit_for_bit_in_few_bytes(tmp_path):
    run_dir, history = logged_run(tmp_path / "run", 6)
    assert [p.name for p in sorted(tmp_path.joinpath("run").glob("head-*"))] == [
        "head-000000.safetensors"]  # one dense master, then only the log grew
    resumed = RunDirectory(run_dir.path).load_checkpoint()
    assert resumed.iterations_done == 6 and torch.equal(resumed.weight, history[-1])
    record = KEPT * (4 + 4) + 28  # int32 positions + float32 values + the header
    state = json.loads(run_dir.checkpoint_path.read_text())
    assert state["deltas_bytes"] == 6 * record
    assert record * 20 < SHAPE[0] * SHAPE[1] * 4  # a step's record: ~4% of a dense master


def test_a_torn_last_record_is_ignored_and_the_earlier_ones_kept(tmp_path):
    run_dir, history = logged_run(tmp_path / "run", 3)
    weight = history[-1].clone()
    run_dir.append_delta(3, stepped(weight, 99), weight)  # the crash: logged, not committed
    log = run_dir.path / run_dir.log.name
    log.write_bytes(log.read_bytes()[:-100])  # ...and torn half-way through the write
    resumed = RunDirectory(run_dir.path)
    assert torch.equal(resumed.load_checkpoint().weight, history[3])
    records, length = deltalog.read(log)  # the reader itself stops at the torn record
    assert [r.iteration for r in records] == [0, 1, 2] and length == json.loads(
        run_dir.checkpoint_path.read_text())["deltas_bytes"]
    weight = history[3].clone()  # the resumed run appends after the committed records
    resumed.append_delta(3, stepped(weight, 5), weight)
    resumed.save_checkpoint(Checkpoint(4, weight), 100)
    assert torch.equal(RunDirectory(run_dir.path).load_checkpoint().weight, weight)


def test_a_damaged_committed_record_is_refused(tmp_path):
    run_dir, _ = logged_run(tmp_path / "run", 2)
    log = run_dir.path / run_dir.log.name
    data = bytearray(log.read_bytes())
    data[40] ^= 0xFF  # a flipped bit inside the first record
    log.write_bytes(bytes(data))
    with pytest.raises(RunError, match="damaged before its commit point.*restore the file"):
        RunDirectory(run_dir.path).load_checkpoint()


def test_a_new_dense_master_every_dense_every_iterations(tmp_path):
    run_dir, history = logged_run(tmp_path / "run", 5, dense_every=2)
    names = sorted(p.name for p in run_dir.path.iterdir() if p.suffix in (".log", ".safetensors"))
    assert names == ["deltas-000004.log", "head-000004.safetensors"]  # older ones removed
    assert torch.equal(RunDirectory(run_dir.path).load_checkpoint().weight, history[5])


def test_a_run_directory_with_dense_checkpoints_only_still_resumes(tmp_path):
    run_dir = RunDirectory(tmp_path / "run").create(ComPOConfig())
    weight = torch.randn(*SHAPE)
    fileio.write_tensors(run_dir.path / "head-000003.safetensors", {"output_weight": weight})
    fileio.write_json(run_dir.checkpoint_path, {  # what checkpoint.json held before the log
        "iterations_done": 3, "weights": "head-000003.safetensors",
        "directions": GENERATOR, "data_offset": 0})
    resumed = RunDirectory(run_dir.path)
    assert torch.equal(resumed.load_checkpoint().weight, weight)
    resumed.append_delta(3, stepped(weight, 1), weight)
    resumed.save_checkpoint(Checkpoint(4, weight), 100)
    assert torch.equal(RunDirectory(run_dir.path).load_checkpoint().weight, weight)
