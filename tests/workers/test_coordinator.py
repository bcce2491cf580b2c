"""Distributed runs on a local Ray instance: topology independence, bytes, worker faults."""

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from compo.config import TrainConfig
from compo.data.encoding import load_tokenized
from compo.errors import DistributedError
from compo.model.loading import ModelConfig, load_model, load_tokenizer
from compo.oracle import LikelihoodOracle
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer, start_run
from compo.votes import LikelihoodVotes, LocalVoteSource
from workers.coordinator import RayVoteSource

pytestmark = pytest.mark.usefixtures("ray_local")
M = 64  # perturbations per iteration in make_config


def test_one_two_three_workers_give_bit_identical_weights(make_config, train_ray,
                                                          local_weights):
    results = {}
    for count in (1, 2, 3):
        weights, trainer = train_ray(make_config(f"topology-{count}", {"num_workers": count}))
        results[count] = (weights, trainer.run_dir.metrics())
    for count, (weights, rows) in results.items():
        assert torch.equal(weights, local_weights), f"{count} workers differ from local"
        assert len(rows) == 4 and sum(row["accepted"] for row in rows) >= 2
        assert {row["ray"]["workers"] for row in rows} == {count}
    rows = results[3][1]
    assert all(len(row["ray"]["per_worker"]) >= 2 for row in rows)  # the work was shared
    assert sum(w["perturbations"] for w in rows[0]["ray"]["per_worker"].values()) == M


def test_moved_mlps_on_two_workers_equal_the_local_run(make_config, train_ray):
    def moved(run_id, ray=None):
        config = make_config(run_id, ray)
        return TrainConfig.model_validate({**config.model_dump(), "compo": {
            **config.compo.model_dump(), "perturb": {"mlp_last_layers": 2}}})

    local = moved("moved-local")
    local_trainer = ComPOTrainer(local, start_run(local))
    expected = local_trainer.run(progress=False)
    weights, trainer = train_ray(moved("moved-ray", {"num_workers": 2}))
    assert weights.shape == trainer.layout.shape and weights.shape[0] > trainer.layout.head.rows
    assert torch.equal(weights, expected)
    assert sum(row["accepted"] for row in trainer.run_dir.metrics()) >= 2
    moved_rows = weights[trainer.layout.head.rows :]  # the step reached the MLP blocks too
    assert not torch.equal(moved_rows, trainer.base_weight[trainer.layout.head.rows :])


def test_low_rank_directions_one_process_two_workers_and_resume_agree(make_config, train_ray):
    def low_rank(run_id, ray=None, **fields):
        config = make_config(run_id, ray, **fields)
        return TrainConfig.model_validate({**config.model_dump(), "compo": {
            **config.compo.model_dump(), "directions": {"kind": "low_rank", "rank": 2}}})

    local = low_rank("low-rank-local")
    trainer = ComPOTrainer(local, start_run(local))
    expected = trainer.run(progress=False)
    assert sum(row["accepted"] for row in trainer.run_dir.metrics()) >= 2
    assert not torch.equal(expected, trainer.base_weight)
    weights, _ = train_ray(low_rank("low-rank-ray", {"num_workers": 2}))
    assert torch.equal(weights, expected)

    def interrupt(row):
        if row["iteration"] == 1:
            raise KeyboardInterrupt

    cut = low_rank("low-rank-cut", checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        ComPOTrainer(cut, start_run(cut), on_iteration=interrupt).run(progress=False)
    run_dir = RunDirectory(Path(cut.output_dir) / cut.run_id)
    assert ComPOTrainer(cut, run_dir).run(progress=False).equal(expected)


def test_bytes_per_iteration_are_measured_and_small(make_config, train_ray, model_dir):
    weights, trainer = train_ray(make_config("bytes", {"num_workers": 2}))
    head_bytes = weights.numel() * weights.element_size()  # one dense output layer
    for row in trainer.run_dir.metrics():
        ray_row = row["ray"]
        moved = ray_row["bytes"]
        assert moved["votes_per_perturbation"] <= 16
        assert moved["vote_args"] > 0 and moved["vote_results"] > 5 * M
        assert moved["total"] == sum(v for k, v in moved.items()
                                     if k not in ("total", "votes_per_perturbation"))
        assert moved["total"] < head_bytes / 4, "never m*d or workers*d values"
        if row["accepted"]:
            assert 0 < ray_row["update_bytes"] <= moved["object_store_puts"]
            assert ray_row["version"] >= 1
        assert ray_row["seconds"]["votes"] > 0 and ray_row["seconds"]["rebuild"] > 0
        for stats in ray_row["per_worker"].values():
            assert stats["per_s"] > 0


@pytest.mark.parametrize("count, restarts", [(1, 3), (2, 3), (2, 0)])
def test_killed_worker_mid_iteration_changes_nothing(count, restarts, make_config, train_ray,
                                                     local_weights):
    killed = []

    def kill_once(source, done, total):
        if source.group.round == 2 and not killed and done < total:
            victim = source.workers[-1]
            killed.append(victim.name)
            os.kill(victim.pid, signal.SIGKILL)

    config = make_config(f"killed-{count}-{restarts}", {"num_workers": count, "chunk_size": 8,
                                                         "max_restarts": restarts})
    weights, trainer = train_ray(config, on_votes=kill_once)
    rows = trainer.run_dir.metrics()
    assert killed == [f"worker-{count - 1}"]
    assert torch.equal(weights, local_weights)
    assert rows[1]["ray"]["failures"] >= 1 and rows[1]["ray"]["redispatched"] >= 1
    if count == 1:  # nobody else to take over: the restarted actor finished the iteration
        assert rows[1]["ray"]["per_worker"]["worker-0"]["perturbations"] >= M
    if restarts == 0:  # no restart allowed: the actor is given up, the other one carries on
        assert rows[-1]["ray"]["dead"] == 1 and rows[-1]["ray"]["workers"] == 1


def test_unreachable_worker_has_its_chunks_redone_elsewhere(make_config, train_ray,
                                                            local_weights):
    stopped, resumed = [], []

    def freeze_until_the_votes_are_in(source, done, total):
        """Stop worker-0 in iteration 1; let it go on once that iteration has every vote
        (so its chunks were redone elsewhere, however long that took)."""
        if source.group.round == 2 and not stopped:
            pid = next(w for w in source.workers if w.name == "worker-0").pid
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        elif stopped and not resumed and (done == total or source.group.round > 2):
            resumed.append(resume(stopped[0]))

    config = make_config("frozen", {"num_workers": 2, "chunk_size": 8,
                                    "straggler_timeout_s": 2.0})
    try:
        weights, trainer = train_ray(config, on_votes=freeze_until_the_votes_are_in)
    finally:
        for pid in stopped:
            resume(pid)
    rows = trainer.run_dir.metrics()
    assert stopped and torch.equal(weights, local_weights)
    assert rows[1]["ray"]["redispatched"] >= 1 and rows[1]["ray"]["failures"] == 0


def resume(pid: int) -> int:
    with contextlib.suppress(ProcessLookupError):  # the run may have ended and killed it
        os.kill(pid, signal.SIGCONT)
    return pid


@pytest.mark.parametrize("count", [1, 2])
def test_killed_worker_during_the_rebuild_changes_nothing(count, make_config, train_ray,
                                                         local_weights):
    local = make_config("local")
    rows = RunDirectory(Path(local.output_dir) / "local").metrics()
    accepted = next(row["iteration"] for row in rows if row["accepted"])
    killed = []

    def kill_after_the_votes(source, done, total):  # the rebuild of the step comes next
        if source.group.round == accepted + 1 and done == total and not killed:
            victim = source.workers[-1]
            killed.append(victim.name)
            os.kill(victim.pid, signal.SIGKILL)

    config = make_config(f"rebuild-killed-{count}", {"num_workers": count, "max_restarts": 3})
    weights, trainer = train_ray(config, on_votes=kill_after_the_votes)
    row = trainer.run_dir.metrics()[accepted]
    assert killed and row["accepted"] and torch.equal(weights, local_weights)
    assert row["ray"]["failures"] >= 1 and row["ray"]["seconds"]["rebuild_step"] > 0


def test_stale_worker_is_refused_and_brought_back_exactly(make_config, model_dir, pairs_path):
    config = make_config("stale", {"num_workers": 2})
    model = load_model(ModelConfig(path=str(model_dir)))
    tokenizer = load_tokenizer(model_dir)
    pairs = load_tokenized(config.data, tokenizer)[0][:1]
    oracle = LikelihoodOracle(model, config.compo, tokenizer.pad_token_id)
    local = LocalVoteSource(LikelihoodVotes(oracle), config.compo)
    weight = local.oracle.scorer.master_weight()
    source = RayVoteSource(config, progress=False).start(weight.clone())
    try:
        source.prepare(pairs, weight)
        # a worker that moved on to weights the coordinator never published
        import ray

        from workers.protocol import WeightSnapshot
        moved = weight.clone()
        moved.view(-1)[:2] = 9.0
        rogue = WeightSnapshot(7, moved.numpy())
        ray.get(source.workers[1].actor.apply.remote(rogue))
        votes = source.votes(3, 0, list(range(M)))
        local.prepare(pairs, weight)
        assert torch.equal(votes, local.votes(3, 0, list(range(M))))
        stats = source.metrics()["ray"]
        assert stats["failures"] >= 1 and stats["redispatched"] >= 1
        source.prepare(pairs, weight)  # next round: the rogue worker got a dense snapshot
        assert len(source.group.usable()) == 2
        assert torch.equal(source.votes(3, 1, list(range(M))),
                           local.votes(3, 1, list(range(M))))
    finally:
        source.close()


def test_a_body_that_cannot_load_the_model_fails_fast_naming_it(make_config, tmp_path):
    config = make_config("bad-path", {"num_workers": 1})
    config = config.model_copy(update={"model": ModelConfig(path=str(tmp_path / "nowhere"))})
    started = time.monotonic()
    source = RayVoteSource(config, progress=False)
    try:
        with pytest.raises(DistributedError) as error:
            source.start(torch.zeros(3, 3))
    finally:
        source.close()
    message = str(error.value)
    assert message.startswith("the body could not load the model ")  # the one that loads
    assert str(tmp_path / "nowhere") in message
    assert "no config.json there" in message
    assert time.monotonic() - started < 60


def test_cluster_too_small_is_a_clear_error(make_config):
    config = make_config("too-big", {"num_workers": 9, "placement_timeout_s": 2.0})
    with pytest.raises(DistributedError, match=r"could not reserve 9 x .*Lower ray.num_workers"):
        RayVoteSource(config, progress=False)
