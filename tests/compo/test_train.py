"""Training loop: determinism, resume, interruption, checkpoints that survive crashes."""

import hashlib
import json

import pytest
import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, TrainConfig
from compo.errors import ConfigError, RunError
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer, export_run, start_run


def make_config(model_dir, pairs_file, tmp_path, run_id, **kwargs) -> TrainConfig:
    compo = ComPOConfig(num_perturbations=64, radius=1e-2, step_scale=0.5, accept_ratio=0.1)
    return TrainConfig(model=ModelConfig(path=str(model_dir)),
                       data=DataConfig(path=str(pairs_file)), compo=compo, seed=3, epochs=2,
                       output_dir=str(tmp_path / "runs"), run_id=run_id, **kwargs)


def train(config: TrainConfig, **kwargs) -> tuple[torch.Tensor, ComPOTrainer]:
    trainer = ComPOTrainer(config, start_run(config), **kwargs)
    return trainer.run(progress=False), trainer


def test_same_seed_same_weights_and_metrics_logged(model_dir, pairs_file, tmp_path):
    first, trainer = train(make_config(model_dir, pairs_file, tmp_path, "a"))
    second, again = train(make_config(model_dir, pairs_file, tmp_path, "b"))
    assert torch.equal(first, second)
    # identical runs export identical bytes: users can checksum the delta and the model
    export_run(trainer, first), export_run(again, second)
    for name in ("delta.safetensors", "final/model.safetensors"):
        a, b = (t.run_dir.path / name for t in (trainer, again))
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    rows = trainer.run_dir.metrics()
    assert len(rows) == 8  # 4 pairs x 2 epochs
    assert any(row["accepted"] for row in rows)
    assert not torch.equal(first, trainer.base_weight)
    for row in rows:
        assert row["m"] == 64 and 0 <= row["ratio"] <= 1
        assert set(row) >= {"n_minus", "step", "kept_fraction", "update_norm", "seconds",
                            "perturbations_per_s", "logp_chosen_before", "logp_rejected_after"}
    saved = (trainer.run_dir.path / "config.yaml").read_text()
    assert "num_perturbations: 64" in saved and "run_id: a" in saved


def test_other_seed_other_weights(model_dir, pairs_file, tmp_path):
    first, _ = train(make_config(model_dir, pairs_file, tmp_path, "a"))
    config = make_config(model_dir, pairs_file, tmp_path, "b").model_copy(update={"seed": 4})
    second, _ = train(config)
    assert not torch.equal(first, second)


def test_interrupt_then_resume_reproduces_uninterrupted_run(model_dir, pairs_file, tmp_path):
    full, _ = train(make_config(model_dir, pairs_file, tmp_path, "full", checkpoint_every=3))

    def interrupt(row):
        if row["iteration"] == 4:
            raise KeyboardInterrupt

    config = make_config(model_dir, pairs_file, tmp_path, "cut", checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_iteration=interrupt)
    run_dir = RunDirectory(tmp_path / "runs" / "cut")
    assert run_dir.load_checkpoint().iterations_done == 5
    state = json.loads(run_dir.checkpoint_path.read_text())  # the dense master at 3 + a log
    assert state["dense_iterations"] == 3 and state["deltas_bytes"] > 0
    resumed = ComPOTrainer(config, run_dir).run(progress=False)
    assert torch.equal(resumed, full)
    assert [row["iteration"] for row in run_dir.metrics()] == list(range(8))


def test_resume_from_an_older_checkpoint_redoes_iterations_exactly(model_dir, pairs_file,
                                                                   tmp_path):
    full, trainer = train(make_config(model_dir, pairs_file, tmp_path, "full"))
    config = make_config(model_dir, pairs_file, tmp_path, "crash", checkpoint_every=3)

    def crash(row):  # a hard crash: no chance to save
        if row["iteration"] == 4:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        train(config, on_iteration=crash)
    run_dir = RunDirectory(tmp_path / "runs" / "crash")
    assert run_dir.load_checkpoint().iterations_done == 3
    assert torch.equal(ComPOTrainer(config, run_dir).run(progress=False), full)


def test_crash_while_writing_a_checkpoint_keeps_the_last_one(model_dir, pairs_file, tmp_path,
                                                           monkeypatch):
    from compo import fileio

    config = make_config(model_dir, pairs_file, tmp_path, "c", checkpoint_every=2,
                         dense_every=2)  # every commit writes a dense master
    calls = {"n": 0}
    real_header = fileio.safetensors_header

    def failing_header(tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second dense master dies half-way through the write
            raise OSError("disk full")
        return real_header(tensors, metadata)

    monkeypatch.setattr(fileio, "safetensors_header", failing_header)
    with pytest.raises(OSError):
        train(config)
    checkpoint = RunDirectory(tmp_path / "runs" / "c").load_checkpoint()
    assert checkpoint.iterations_done == 2 and checkpoint.weight.shape[1] == 32
    leftovers = list((tmp_path / "runs" / "c").glob("*.tmp"))
    assert leftovers == []


def test_starting_over_an_existing_run_is_refused(model_dir, pairs_file, tmp_path):
    config = make_config(model_dir, pairs_file, tmp_path, "x", max_iterations=1)
    train(config)
    with pytest.raises(RunError, match="compo train --resume"):
        start_run(config)


def test_only_the_output_layer_moves(model_dir, pairs_file, tmp_path):
    from compo.model.loading import load_model

    weight, trainer = train(make_config(model_dir, pairs_file, tmp_path, "o", max_iterations=3))
    original = load_model(ModelConfig(path=str(model_dir))).state_dict()
    from compo.train import export_run

    export_run(trainer, weight)
    tuned = load_model(ModelConfig(path=str(trainer.run_dir.path / "final"))).state_dict()
    changed = [name for name in original if not torch.equal(original[name], tuned[name])]
    assert changed == ["lm_head.weight"]


@pytest.mark.parametrize("perturb", [{"mlp_last_layers": 2},
                                     {"target": "attention_output", "last_layers": 2}])
def test_moved_mlps_train_resume_export_and_apply_exactly(model_dir, pairs_file, tmp_path,
                                                          perturb):
    from compo.model.export import apply_delta
    from compo.model.loading import load_model

    def moved(run_id, **kwargs):
        return reference_config(model_dir, pairs_file, tmp_path, run_id,
                                compo={"perturb": perturb}, **kwargs)

    weight, trainer = train(moved("m", checkpoint_every=2))
    rows = trainer.run_dir.metrics()
    assert sum(row["accepted"] for row in rows) >= 2
    assert weight.shape == trainer.layout.shape and weight.shape[0] > trainer.layout.head.rows

    def interrupt(row):
        if row["iteration"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(moved("cut", checkpoint_every=2), on_iteration=interrupt)
    resumed = ComPOTrainer(moved("cut", checkpoint_every=2),
                           RunDirectory(tmp_path / "runs" / "cut")).run(progress=False)
    assert torch.equal(resumed, weight)

    summary = export_run(trainer, weight)
    # the master's change is measured with the float64 tail, final/'s with its own float32
    # forward: they agree to float32's precision of the body
    assert all(abs(kept - 1) < 1e-4 for kept in summary["export"]["kept_fraction"])
    original = load_model(ModelConfig(path=str(model_dir))).state_dict()
    final = load_model(ModelConfig(path=str(trainer.run_dir.path / "final"))).state_dict()
    changed = sorted(name for name in original if not torch.equal(original[name], final[name]))
    assert changed == sorted(block.name for block in trainer.layout.blocks)
    for name, tensor in trainer.layout.tensors(weight).items():
        assert torch.equal(final[name], tensor)  # float32 export keeps the master exactly
    rebuilt = apply_delta(model_dir, trainer.run_dir.path / "delta.safetensors",
                          tmp_path / "applied")
    again = load_model(ModelConfig(path=str(rebuilt))).state_dict()
    assert all(torch.equal(again[name], final[name]) for name in final)


def reference_config(model_dir, pairs_file, tmp_path, run_id, compo=None, data=None, **kwargs):
    """make_config with the reference code's options (compo and data fields added)."""
    config = make_config(model_dir, pairs_file, tmp_path, run_id, **kwargs)
    return TrainConfig.model_validate({
        **config.model_dump(), "compo": {**config.compo.model_dump(), **(compo or {})},
        "data": {**config.data.model_dump(), **(data or {})}})


def test_trial_step_check_refuses_steps_whose_trial_does_not_improve_the_pair(
        model_dir, pairs_file, tmp_path):
    short = {"max_iterations": 3}
    plain, plain_trainer = train(make_config(model_dir, pairs_file, tmp_path, "plain", **short))
    checked = reference_config(model_dir, pairs_file, tmp_path, "checked", **short,
                               compo={"accept_check": "trial_step", "trial_step_scale": 5.0})
    weight, trainer = train(checked)
    rows, plain_rows = trainer.run_dir.metrics(), plain_trainer.run_dir.metrics()
    verdicts = [row["trial_check"] for row in rows]
    assert verdicts == ["refused", "passed", "refused"]  # measured on this model and data
    for row in rows:
        if row["trial_check"] is None:  # the votes already skip: no trial
            assert not row["accepted"] and "logp_chosen_trial" not in row
            continue
        improved = any(c1 > c0 and r1 < r0 for c0, c1, r0, r1 in zip(
            row["logp_chosen_before"], row["logp_chosen_trial"], row["logp_rejected_before"],
            row["logp_rejected_trial"], strict=True))
        assert (row["trial_check"] == "passed") == improved
        assert row["accepted"] == improved
        if not improved:  # the weights stay: the pair's log-probs do not move
            assert row["logp_chosen_after"] == row["logp_chosen_before"] and row["step"] == 0
    first = verdicts.index("refused")  # identical weights until then, so identical votes
    assert rows[first]["n_minus"] == plain_rows[first]["n_minus"]
    assert plain_rows[first]["accepted"] and not rows[first]["accepted"]
    assert not torch.equal(weight, plain)


RESELECT = {"reselect": {"delta": 1.0, "rule": "abs", "scan_batch": 2}}


def test_reselect_picks_noisy_pairs_under_the_current_weights_and_resumes_exactly(
        model_dir, pairs_file, tmp_path):
    options = {"data": RESELECT, "shuffle": False, "max_iterations": 6}
    full, trainer = train(reference_config(model_dir, pairs_file, tmp_path, "full", **options))
    rows = trainer.run_dir.metrics()
    for row in rows:  # the picked pair is noisy under the weights of its iteration
        margin = row["logp_chosen_before"][0] - row["logp_rejected_before"][0]
        line = row["pair_indices"][0] + 1
        assert abs(margin) <= 1.0 + 1e-4 and row["pairs"][0].endswith(f":{line}")
    offsets = [row["data_offset"] for row in rows]
    assert offsets == [(row["pair_indices"][0] + 1) % 4 for row in rows]
    assert 3 not in {row["pair_indices"][0] for row in rows}  # its margin is > 1 here
    config = reference_config(model_dir, pairs_file, tmp_path, "crash", checkpoint_every=2,
                              **options)

    def crash(row):  # after the checkpoint at 4: the resumed scan starts at its offset
        if row["iteration"] == 4:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        train(config, on_iteration=crash)
    run_dir = RunDirectory(tmp_path / "runs" / "crash")
    assert run_dir.load_checkpoint().data_offset == offsets[3]
    assert torch.equal(ComPOTrainer(config, run_dir).run(progress=False), full)
    assert [row["pair_indices"] for row in run_dir.metrics()] == [
        row["pair_indices"] for row in rows]


def test_reselect_ends_the_run_when_no_pair_is_noisy(model_dir, pairs_file, tmp_path):
    config = reference_config(model_dir, pairs_file, tmp_path, "none", shuffle=False,
                              data={"reselect": {"delta": 1e-6, "rule": "abs"}})
    weight, trainer = train(config)
    assert trainer.run_dir.metrics() == [] and torch.equal(weight, trainer.base_weight)
    assert trainer.trained_pairs() == []


def test_options_that_need_the_model_here_are_refused_with_votes_from_elsewhere(
        model_dir, pairs_file, tmp_path):
    config = reference_config(model_dir, pairs_file, tmp_path, "ray",
                              compo={"accept_check": "trial_step"})
    with pytest.raises(ConfigError, match="trial_step: not supported when votes come"):
        ComPOTrainer(config, start_run(config), source=object())


def test_the_run_holds_one_float32_master(model_dir, pairs_file, tmp_path):
    config = make_config(model_dir, pairs_file, tmp_path, "one", max_iterations=2)
    trainer = ComPOTrainer(config, start_run(config))
    loaded = trainer.base_weight.clone()
    held = []
    trainer.on_iteration = lambda row: held.append(trainer._base)
    weight = trainer.run(progress=False)
    assert held == [None, None]  # the loaded layer is let go while the run goes on
    assert torch.equal(trainer.base_weight, loaded) and not torch.equal(weight, loaded)
