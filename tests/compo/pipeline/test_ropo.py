"""ROPO as a first-stage trainer: TRL's DPOTrainer with ROPO's loss, on the tiny model."""

import json
import math

import pytest
import torch

from compo.config import DataConfig, ModelConfig
from compo.data.encoding import load_tokenized
from compo.errors import ConfigError
from compo.fileio import read_tensors
from compo.model.loading import load_model, load_tokenizer
from compo.model.scoring import score_pairs
from compo.pipeline import first_stage
from compo.pipeline.config import FirstStage

pytest.importorskip("trl")  # the `train` extra


def stage(**changes) -> FirstStage:
    settings = {"trainer": "ropo", "learning_rate": 1e-2, "max_steps": 2, "batch_size": 2,
                "max_length": 64, "save_steps": 2, "logging_steps": 1, "ropo_alpha": 3.0,
                "trl_args": {"gradient_checkpointing": False}}
    return FirstStage(**{**settings, **changes})


def test_ropo_trains_a_step_and_saves(tmp_path, model_dir, pairs_file):
    summary = first_stage.train_first_stage(stage(), ModelConfig(path=str(model_dir)),
                                            DataConfig(path=str(pairs_file)), tmp_path / "s",
                                            seed=0, progress=False)
    assert summary["trainer"] == "ropo" and summary["steps"] == 2
    trained = read_tensors(tmp_path / "s/model/model.safetensors")["lm_head.weight"]
    assert not torch.equal(trained, read_tensors(model_dir / "model.safetensors")["lm_head.weight"])
    history = json.loads((tmp_path / "s/log_history.json").read_text())
    assert [row["step"] for row in history if "loss" in row] == [1, 2]
    assert all("rewards/margins" in row for row in history if "loss" in row)


def test_ropo_loss_on_trl_batches_is_the_formula_on_compo_log_probs(tmp_path, model_dir,
                                                                    pairs_file):
    from compo.pipeline.ropo import RopoTrainer, completion_logps

    data = DataConfig(path=str(pairs_file))
    trainer = first_stage.build_trainer(stage(), ModelConfig(path=str(model_dir)), data,
                                        tmp_path, seed=0, progress=False)
    assert isinstance(trainer, RopoTrainer) and trainer.ropo_alpha == 3.0
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    tokenizer = load_tokenizer(model_dir)
    pairs, _ = load_tokenized(data, tokenizer)
    chosen, rejected = score_pairs(load_model(ModelConfig(path=str(model_dir))), pairs,
                                   tokenizer.pad_token_id)
    with torch.no_grad():
        ours = completion_logps(trainer.model, batch).double()
        loss = trainer.compute_loss(trainer.model, batch)
    assert torch.allclose(ours, torch.cat([chosen, rejected]).double(), atol=1e-4)
    # policy == reference at the start: every margin is 0, so the loss is c_dpo log 2 + c_reg / 2
    alpha = 3.0
    expected = 4 * alpha / (1 + alpha) ** 2 * math.log(2) + 4 * alpha**2 / (1 + alpha) ** 2 / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_options_ropo_does_not_use_are_refused(tmp_path, model_dir):
    model = ModelConfig(path=str(model_dir))
    with pytest.raises(ConfigError, match="change DPO's loss"):
        first_stage.trl_arguments(stage(trl_args={"label_smoothing": 0.1}), model, tmp_path, 0)
    with pytest.raises(ConfigError, match="loss_type applies to dpo and cpo only"):
        first_stage.trl_arguments(stage(loss_type=["ipo"]), model, tmp_path, 0)
    with pytest.raises(ValueError, match="ropo_alpha applies to trainer: ropo only"):
        FirstStage(trainer="dpo", ropo_alpha=2.0)
