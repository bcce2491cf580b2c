"""Configuration of `compo eval`: greedy generations, the judge win rate, the report."""

from __future__ import annotations

from pydantic import Field

from compo.config import DataConfig, ModelConfig, StrictModel
from compo.config_files import require_model_dir, require_path


class GenerationConfig(StrictModel):
    """Greedy generations for the length statistic (verbosity)."""

    enabled: bool = True
    max_new_tokens: int = Field(128, gt=0)
    max_prompts: int | None = Field(100, gt=0, description="first N distinct prompts; None: all")
    batch_size: int = Field(8, gt=0)


class JudgeConfig(StrictModel):
    """Win rate against a reference model's greedy responses, judged by the oracle service."""

    url: str = Field(description="oracle service base URL, e.g. http://127.0.0.1:8000")
    token_env: str | None = Field(
        "COMPO_ORACLE_TOKEN", description="environment variable holding the API token")
    reference_model: ModelConfig
    run_id: str | None = Field(None, description="oracle service run id for the statistics")


class EvalConfig(StrictModel):
    """`compo eval`: a model on a preference set, optionally against a base model."""

    model: ModelConfig
    data: DataConfig
    base_model: ModelConfig | None = Field(
        None, description="displacement table: how log-probs moved relative to this model")
    run_dir: str | None = Field(
        None, description="a pipeline output or ComPO run directory: its plots are (re)made "
        "there and linked from the report")
    output_dir: str = Field("eval", description="report.json and report.md are written here")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig | None = None

    def check_paths(self) -> None:
        """Models and data exist (before anything is loaded)."""
        require_model_dir(self.model.path, "model.path")
        require_path(self.data.path, "data.path")
        if self.base_model is not None:
            require_model_dir(self.base_model.path, "base_model.path")
        if self.judge is not None:
            require_model_dir(self.judge.reference_model.path, "judge.reference_model.path")
