"""Configuration of `compo pipeline` (split -> first stage -> ComPO) and `compo eval`.

Each stage has a `skip` switch; the stages' own knobs reuse the core classes
(SplitConfig's margin rule, TrainConfig for ComPO, TRL's config classes for the first
stage), which are checked up front by `compo.pipeline.stages.validate`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compo.config import DataConfig, ModelConfig, StrictModel
from compo.data.ches import ChesConfig
from compo.data.ropo import RopoConfig
from compo.eval.config import GenerationConfig, JudgeConfig
from compo.trackers import tracker_names


class SplitStage(StrictModel):
    """Stage 1: clean/noisy split with the reference model (`model` of the pipeline)."""

    skip: bool = Field(False, description="do not split: use from_dir, or every pair twice")
    from_dir: str | None = Field(
        None, description="with skip: a directory holding clean.jsonl / noisy.jsonl of an "
        "earlier split; None: every pair goes to both stages (e.g. SimPO + ComPO)")
    criterion: Literal["margin", "ches", "ropo"] = Field(
        "margin", description="which criterion defines noisy.jsonl")
    delta: float = Field(3.0, gt=0, description="margin criterion: see SplitConfig.delta")
    rule: Literal["abs", "reference"] = Field("abs", description="see SplitConfig.rule")
    histogram_bins: int = Field(20, gt=1)
    ches: ChesConfig = Field(default_factory=ChesConfig)
    ropo: RopoConfig = Field(default_factory=RopoConfig)

    @model_validator(mode="after")
    def _ches_needed(self) -> SplitStage:
        for name in ("ches", "ropo"):
            if self.criterion == name and not getattr(self, name).enabled:
                raise ValueError(f"criterion '{name}' needs {name}.enabled: true")
        if self.from_dir is not None and not self.skip:
            raise ValueError("from_dir is used only with skip: true (a split made earlier)")
        return self


class FirstStage(StrictModel):
    """Stage 2: direct alignment on the clean pairs with a TRL trainer."""

    skip: bool = Field(False, description="no first stage: ComPO starts from `checkpoint`")
    checkpoint: str | None = Field(
        None, description="with skip: an aligned model directory ComPO starts from (e.g. a "
        "SimPO model); None: the pipeline's reference model")
    trainer: Literal["dpo", "simpo", "cpo", "orpo", "ropo"] = Field(
        "dpo", description="dpo: DPOTrainer (loss_type picks the variant); simpo: CPOTrainer "
        "with loss_type simpo, cpo_alpha 0; cpo: CPOTrainer; orpo: ORPOTrainer; ropo: "
        "DPOTrainer with ROPO's loss (compo.pipeline.ropo)")
    ropo_alpha: float | None = Field(None, gt=0, description="ropo: the trade-off alpha of "
                                     "ROPO's loss (compo.data.ropo); default 2.0")
    loss_type: list[str] = Field(
        ["sigmoid"], min_length=1, description="dpo: DPOTrainer loss types (several are "
        "combined, weights via trl_args.loss_weights); cpo: exactly one CPO loss type")
    beta: float = Field(0.1, gt=0, description="TRL's beta of the chosen trainer")
    learning_rate: float = Field(5e-7, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(8, gt=0, description="pairs per device per step")
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_length: int = Field(1024, gt=0, description="prompt + response tokens per sequence")
    save_steps: int = Field(100, gt=0, description="steps between resumable TRL checkpoints")
    logging_steps: int = Field(10, gt=0)
    trl_args: dict[str, Any] = Field(
        default_factory=dict, description="any other field of the TRL config class "
        "(DPOConfig, CPOConfig, ORPOConfig), checked before work starts")
    report_to: list[str] = Field(
        default_factory=list, description="TRL's report_to: tensorboard (event files under "
        "<output_dir>/first_stage/trl/runs/), wandb, mlflow, trackio; [] or 'none': none. "
        "The ComPO stage has its own (compo.train.report_to)")

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> list[str]:
        return tracker_names(value)

    @model_validator(mode="after")
    def _checkpoint_with_skip(self) -> FirstStage:
        if self.checkpoint is not None and not self.skip:
            raise ValueError("checkpoint is used only with skip: true (ComPO then starts "
                             "from it); remove it, or set skip: true")
        if self.ropo_alpha is not None and self.trainer != "ropo":
            raise ValueError("ropo_alpha applies to trainer: ropo only; remove it")
        if self.report_to and "report_to" in self.trl_args:
            raise ValueError("report_to is set twice (first_stage.report_to and "
                             "first_stage.trl_args.report_to); keep first_stage.report_to")
        if "output_dir" in self.trl_args:
            raise ValueError("trl_args.output_dir is set by the pipeline "
                             "(<output_dir>/first_stage/trl); remove it")
        return self


class ComPOStage(StrictModel):
    """Stage 3: ComPO on the noisy pairs, from the first stage's checkpoint."""

    skip: bool = False
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig fields except model, data, output_dir "
        "and run_id, which the pipeline sets (e.g. compo: {num_perturbations: 1800})")


class PipelineEval(StrictModel):
    """Evaluate the pipeline's final model at the end (base: the reference model)."""

    data: DataConfig = Field(description="held-out preference pairs")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig | None = None


class PipelineConfig(StrictModel):
    """`compo pipeline`: split -> first stage on clean -> ComPO on noisy -> export."""

    output_dir: str = Field("runs/pipeline", description="every stage writes a subdirectory")
    seed: int = Field(0, ge=0, description="seed of the first stage (ComPO: compo.train.seed)")
    model: ModelConfig = Field(description="the reference (SFT) model: splits the data and "
                               "starts the first stage")
    data: DataConfig
    split: SplitStage = Field(default_factory=SplitStage)
    first_stage: FirstStage = Field(default_factory=FirstStage)
    compo: ComPOStage = Field(default_factory=ComPOStage)
    eval: PipelineEval | None = None
    plots: bool = Field(True, description="write PNG plots of the stages to <output_dir>/plots")
