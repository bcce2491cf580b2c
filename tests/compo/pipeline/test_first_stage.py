"""The first stage runs TRL's real trainers (DPO, SimPO, CPO, ORPO) and resumes."""

import json

import pytest
import torch
from transformers import TrainerCallback

from compo.config import DataConfig, ModelConfig
from compo.data.encoding import load_tokenized
from compo.errors import ConfigError
from compo.fileio import read_tensors
from compo.model.loading import load_tokenizer
from compo.pipeline import first_stage
from compo.pipeline.config import FirstStage

pytest.importorskip("trl")  # the `train` extra

HEAD = "lm_head.weight"


def stage(**changes) -> FirstStage:
    settings = {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 2, "max_length": 64,
                "save_steps": 2, "logging_steps": 1,
                "trl_args": {"gradient_checkpointing": False}}
    return FirstStage(**{**settings, **changes})


@pytest.mark.parametrize("trainer", ["dpo", "simpo", "cpo", "orpo"])
def test_each_trainer_trains_and_saves(tmp_path, model_dir, pairs_file, trainer):
    summary = first_stage.train_first_stage(
        stage(trainer=trainer), ModelConfig(path=str(model_dir)),
        DataConfig(path=str(pairs_file)), tmp_path / "stage", seed=0, progress=False)
    assert summary["steps"] == 2 and summary["pairs"] == 4
    trained = read_tensors(tmp_path / "stage/model/model.safetensors")[HEAD]
    assert not torch.equal(trained, read_tensors(model_dir / "model.safetensors")[HEAD])
    history = json.loads((tmp_path / "stage/log_history.json").read_text())
    assert [row["step"] for row in history if "loss" in row] == [1, 2]
    assert (tmp_path / "stage/model/tokenizer.json").is_file()


def test_simpo_is_cpo_with_the_simpo_loss(tmp_path, model_dir):
    args = first_stage.trl_arguments(stage(trainer="simpo", beta=2.0),
                                     ModelConfig(path=str(model_dir)), tmp_path, seed=0)
    assert (type(args).__name__, args.loss_type, args.cpo_alpha, args.beta) == (
        "CPOConfig", "simpo", 0.0, 2.0)
    dpo = first_stage.trl_arguments(stage(loss_type=["sigmoid", "sft"]),
                                    ModelConfig(path=str(model_dir)), tmp_path, seed=0)
    assert (type(dpo).__name__, dpo.loss_type, dpo.report_to) == (
        "DPOConfig", ["sigmoid", "sft"], [])
    with pytest.raises(ConfigError, match="CPO takes exactly one"):
        first_stage.trl_arguments(stage(trainer="cpo", loss_type=["sigmoid", "ipo"]),
                                  ModelConfig(path=str(model_dir)), tmp_path, seed=0)


def test_report_to_reaches_trl(tmp_path, model_dir, pairs_file):
    """first_stage.report_to is TRL's report_to: TensorBoard files of the stage's losses."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first_stage.train_first_stage(stage(report_to="tensorboard"), ModelConfig(path=str(
        model_dir)), DataConfig(path=str(pairs_file)), tmp_path / "stage", seed=0,
        progress=False)
    [logdir] = {path.parent for path in (tmp_path / "stage/trl").rglob("events.out.*")}
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]
    with pytest.raises(ValueError, match="set twice"):
        stage(report_to="wandb", trl_args={"report_to": "wandb"})


@pytest.mark.parametrize("trainer", ["dpo", "cpo"])
def test_trl_sees_the_tokens_compo_scores(tmp_path, model_dir, pairs_file, trainer):
    data = DataConfig(path=str(pairs_file))
    built = first_stage.build_trainer(stage(trainer=trainer), ModelConfig(path=str(model_dir)),
                                      data, tmp_path, seed=0, progress=False)
    pairs, _ = load_tokenized(data, load_tokenizer(model_dir))
    for pair, row in zip(pairs, built.train_dataset, strict=True):
        if trainer == "dpo":
            assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (
                pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)
        else:
            assert row["chosen_input_ids"] == pair.prompt_ids + pair.chosen_ids
            assert row["rejected_input_ids"] == pair.prompt_ids + pair.rejected_ids


class StopAt(TrainerCallback):
    """Simulates Ctrl-C once training reaches a step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_first_stage_resumes_from_its_checkpoint(tmp_path, model_dir,
                                                                pairs_file, monkeypatch):
    settings = stage(max_steps=4)
    model, data = ModelConfig(path=str(model_dir)), DataConfig(path=str(pairs_file))
    first_stage.train_first_stage(settings, model, data, tmp_path / "full", 0, False)
    build = first_stage.build_trainer

    def interrupted_build(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(StopAt(3))
        return trainer

    with monkeypatch.context() as patch:
        patch.setattr(first_stage, "build_trainer", interrupted_build)
        with pytest.raises(KeyboardInterrupt):
            first_stage.train_first_stage(settings, model, data, tmp_path / "cut", 0, False)
    assert (tmp_path / "cut/trl/checkpoint-2").is_dir()
    summary = first_stage.train_first_stage(settings, model, data, tmp_path / "cut", 0, False)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    full = read_tensors(tmp_path / "full/model/model.safetensors")[HEAD]
    resumed = read_tensors(tmp_path / "cut/model/model.safetensors")[HEAD]
    assert torch.allclose(full, resumed, atol=1e-6)


def logprob_change(start, trained, pairs_file, tokenizer) -> torch.Tensor:
    """Mean change of log pi(y+), log pi(y-) over the pairs, both models read in float32."""
    from compo.model.loading import load_model
    from compo.model.scoring import score_pairs

    pairs, _ = load_tokenized(DataConfig(path=str(pairs_file)), tokenizer)
    scores = [score_pairs(load_model(ModelConfig(path=str(path))), pairs,
                          tokenizer.pad_token_id) for path in (start, trained)]
    return torch.stack([(scores[1][i] - scores[0][i]).mean() for i in (0, 1)])


def test_a_bf16_first_stage_moves_log_probs_like_a_float32_one(tmp_path, tokenizer,
                                                                pairs_file):
    from compo.demo.tiny import build_llama, save_model

    start = save_model(build_llama(len(tokenizer), hidden=32, layers=2, seed=2).bfloat16(),
                       tokenizer, tmp_path / "bf16-start")
    small_steps = stage(learning_rate=5e-6, max_steps=10, save_steps=10)
    moved = {}
    for dtype in ("float32", "bfloat16"):
        summary = first_stage.train_first_stage(
            small_steps, ModelConfig(path=str(start), dtype=dtype),
            DataConfig(path=str(pairs_file)), tmp_path / dtype, seed=0, progress=False)
        moved[dtype] = logprob_change(start, summary["model"], pairs_file, tokenizer)
    assert moved["float32"].abs().min() > 1e-4  # the steps are small but visible
    relative = (moved["bfloat16"] - moved["float32"]).abs() / moved["float32"].abs()
    assert float(relative.max()) < 0.1, moved
