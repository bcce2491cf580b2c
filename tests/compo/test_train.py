"""Training loop: determinism, resume, interruption, checkpoints that survive crashes."""

import hashlib

import pytest
import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, TrainConfig
from compo.errors import RunError
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

    config = make_config(model_dir, pairs_file, tmp_path, "c", checkpoint_every=2)
    calls = {"n": 0}
    real_header = fileio.safetensors_header

    def failing_header(tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way through the write
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
