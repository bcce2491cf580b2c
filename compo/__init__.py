"""ComPO: preference alignment with comparison oracles (Chen et al., NeurIPS 2025).

The algorithm reads in four files, in order: perturbation (directions z) -> oracle (votes)
-> estimator (the update) -> train (the loop); votes says where votes come from. The names
below are the public API (compo.run: one call for notebooks, docs/python_api.md); everything
else is reached through its module.
"""

from compo.api import RunResult, run
from compo.config import (
    ComPOConfig,
    DataConfig,
    ModelConfig,
    OracleConfig,
    RayConfig,
    SplitConfig,
    TrainConfig,
)
from compo.config_files import load_config, parse_config
from compo.data.split import split
from compo.errors import (
    CompoError,
    ConfigError,
    DataError,
    DeltaError,
    DistributedError,
    JudgeError,
    ModelError,
    RunError,
    RunStopped,
)
from compo.estimator import UpdateDecision, decide_update
from compo.oracle import LikelihoodOracle
from compo.perturbation import direction, direction_key
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer, export_run, start_run
from compo.votes import LocalVoteSource, VoteSource

__all__ = [
    "ComPOConfig", "ComPOTrainer", "CompoError", "ConfigError", "DataConfig", "DataError",
    "DeltaError", "DistributedError", "JudgeError", "LikelihoodOracle", "LocalVoteSource",
    "ModelConfig", "ModelError", "OracleConfig", "RayConfig", "RunDirectory", "RunError",
    "RunResult", "RunStopped", "SplitConfig", "TrainConfig", "UpdateDecision", "VoteSource",
    "decide_update", "direction", "direction_key", "export_run", "load_config",
    "parse_config", "run", "split", "start_run",
]
