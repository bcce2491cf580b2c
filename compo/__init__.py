"""ComPO: preference alignment with comparison oracles (Chen et al., NeurIPS 2025).

The algorithm reads in four files, in order: perturbation (directions z) -> oracle (votes)
-> estimator (the update) -> train (the loop); votes says where votes come from. The names
below are the public API (compo.run: one call for notebooks, docs/python_api.md); everything
else is reached through its module.
"""

from importlib import import_module

# name -> the module that defines it; imported on first use, so that `import compo` (and the
# CLI, which sets threading defaults before torch loads: compo/cli/threads.py) stays cheap
_HOMES = {
    "compo.api": ("RunResult", "run"),
    "compo.config": ("ComPOConfig", "DataConfig", "ModelConfig", "OracleConfig", "RayConfig",
                     "SplitConfig", "TrainConfig"),
    "compo.config_files": ("load_config", "parse_config"),
    "compo.data.split": ("split",),
    "compo.errors": ("CompoError", "ConfigError", "DataError", "DeltaError",
                     "DistributedError", "JudgeError", "ModelError", "OracleFailure",
                     "RunError", "RunStopped"),
    "compo.estimator": ("UpdateDecision", "decide_update"),
    "compo.oracle": ("LikelihoodOracle",),
    "compo.perturbation": ("direction", "direction_key"),
    "compo.rundir": ("RunDirectory",),
    "compo.train": ("ComPOTrainer", "export_run", "start_run"),
    "compo.votes": ("LocalVoteSource", "VoteSource"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'compo' has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "ComPOConfig", "ComPOTrainer", "CompoError", "ConfigError", "DataConfig", "DataError",
    "DeltaError", "DistributedError", "JudgeError", "LikelihoodOracle", "LocalVoteSource",
    "ModelConfig", "ModelError", "OracleConfig", "OracleFailure", "RayConfig",
    "RunDirectory", "RunError", "RunResult", "RunStopped", "SplitConfig", "TrainConfig",
    "UpdateDecision", "VoteSource", "decide_update", "direction", "direction_key",
    "export_run", "load_config", "parse_config", "run", "split", "start_run",
]
