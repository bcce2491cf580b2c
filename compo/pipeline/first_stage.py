"""The pipeline's first stage: direct alignment with TRL's trainers (DPO, SimPO, CPO, ORPO).

Settings are turned into TRL's own config class up front, so a bad value fails before
any model is loaded. Training resumes from the newest TRL checkpoint in <stage>/trl.
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from pathlib import Path

import torch

from compo import fileio
from compo.config import DataConfig, ModelConfig
from compo.data.encoding import load_tokenized
from compo.errors import ConfigError
from compo.model.loading import DTYPES, load_tokenizer
from compo.pipeline.config import FirstStage

# name -> (module, config class, trainer class); CPO and ORPO live in trl.experimental (1.x)
TRAINERS = {
    "dpo": ("trl", "DPOConfig", "DPOTrainer"),
    "simpo": ("trl.experimental.cpo", "CPOConfig", "CPOTrainer"),
    "cpo": ("trl.experimental.cpo", "CPOConfig", "CPOTrainer"),
    "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer"),
    "ropo": ("compo.pipeline.ropo", "DPOConfig", "RopoTrainer"),  # TRL's DPOConfig, re-exported
}
# DPOTrainer's loss types (TRL 1.x); TRL itself only rejects others in the first loss call
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                  "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
                  "sft", "sigmoid_norm")
# DPOConfig fields that change DPO's loss, which RopoTrainer does not use: refused for ropo
DPO_LOSS_FIELDS = ("loss_type", "loss_weights", "ld_alpha", "f_divergence_type",
                   "f_alpha_divergence_coef", "label_smoothing", "use_weighting", "rpo_alpha")
DEFAULT_ROPO_ALPHA = 2.0  # first_stage.ropo_alpha unset
SAVE_TOTAL_LIMIT = 2  # TRL checkpoints kept for resuming (the newest is what resume needs)


def trl_classes(trainer: str) -> tuple[type, type]:
    """TRL's config and trainer classes for a first-stage trainer name."""
    if trainer not in TRAINERS:
        raise ConfigError(f"first_stage.trainer: unknown trainer {trainer!r}; use one of "
                          f"{', '.join(TRAINERS)}")
    module_name, config_name, trainer_name = TRAINERS[trainer]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"first_stage.trainer={trainer} needs TRL ({error}); install it "
                          "with: pip install 'compo[train]'") from None
    return getattr(module, config_name), getattr(module, trainer_name)


def loss_settings(stage: FirstStage, config_cls: type) -> dict:
    """The trainer-specific TRL fields: loss type(s) and beta."""
    explicit = "loss_type" in stage.model_fields_set
    if stage.trainer == "dpo":
        unknown = [name for name in stage.loss_type if name not in DPO_LOSS_TYPES]
        if unknown:
            raise ConfigError(f"first_stage.loss_type: unknown DPO loss type(s) {unknown}; "
                              f"use any of {', '.join(DPO_LOSS_TYPES)}")
        return {"loss_type": list(stage.loss_type), "beta": stage.beta}
    if stage.trainer == "cpo":
        choices = next(f.metadata.get("choices", ()) for f in fields(config_cls)
                       if f.name == "loss_type")
        if len(stage.loss_type) != 1 or stage.loss_type[0] not in choices:
            raise ConfigError(f"first_stage.loss_type: CPO takes exactly one of "
                              f"{', '.join(choices)}; got {stage.loss_type}")
        return {"loss_type": stage.loss_type[0], "beta": stage.beta}
    if explicit:
        raise ConfigError(f"first_stage.loss_type applies to dpo and cpo only; remove it for "
                          f"trainer {stage.trainer}")
    if stage.trainer == "simpo":
        return {"loss_type": "simpo", "cpo_alpha": 0.0, "beta": stage.beta}
    if stage.trainer == "ropo":  # RopoTrainer computes its own loss, never TRL's loss_type
        unused = sorted(set(stage.trl_args) & set(DPO_LOSS_FIELDS))
        if unused:
            raise ConfigError(f"first_stage.trl_args: {unused} change DPO's loss, which trainer "
                              "ropo replaces by ROPO's (ropo_alpha, beta); remove them")
        return {"loss_type": ["sigmoid"], "beta": stage.beta}
    return {"beta": stage.beta}


def trl_arguments(stage: FirstStage, model: ModelConfig, output_dir: str | Path, seed: int,
                  progress: bool = True):
    """TRL's config object for the stage (ConfigError on anything TRL would reject)."""
    config_cls, _ = trl_classes(stage.trainer)
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(stage.trl_args) - known)
    if unknown:
        raise ConfigError(f"first_stage.trl_args: {unknown} are not fields of TRL's "
                          f"{config_cls.__name__}; check the spelling in TRL's documentation")
    kwargs = {
        "output_dir": str(output_dir), "seed": seed, "report_to": stage.report_to or "none",
        "per_device_train_batch_size": stage.batch_size,
        "gradient_accumulation_steps": stage.gradient_accumulation_steps,
        "learning_rate": stage.learning_rate, "num_train_epochs": stage.epochs,
        "max_steps": stage.max_steps or -1, "max_length": stage.max_length,
        "save_strategy": "steps", "save_steps": stage.save_steps,
        "save_total_limit": SAVE_TOTAL_LIMIT, "logging_steps": stage.logging_steps,
        # float32 master weights (load_trainable) with bf16/fp16 autocast
        "bf16": model.dtype == "bfloat16", "fp16": model.dtype == "float16",
        "use_cpu": model.device == "cpu", "disable_tqdm": not progress,
        **loss_settings(stage, config_cls), **stage.trl_args,
    }
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"first_stage: TRL's {config_cls.__name__} rejected the settings: "
                          f"{error}") from None


def preference_dataset(data: DataConfig, tokenizer):
    """The pairs as TRL's rows: the prompt, chosen and rejected compo validated (an implicit
    prompt already split off), which TRL tokenizes into compo's ids (compo/data/encoding.py)."""
    import datasets

    pairs, _ = load_tokenized(data, tokenizer)
    return datasets.Dataset.from_list([dict(pair.row) for pair in pairs])


def load_trainable(model: ModelConfig, master: bool = True):
    """The causal LM from local files: with `master`, float32 weights (the trainer's
    bf16/fp16 setting then means autocast, and small AdamW steps are not rounded away, as
    they are in bf16 weights); else in model.dtype (the frozen reference)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if master else DTYPES[model.dtype]
    return AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype, local_files_only=True)


def last_checkpoint(folder: Path) -> str | None:
    """Newest TRL checkpoint-N directory in `folder`, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def build_trainer(stage: FirstStage, model: ModelConfig, data: DataConfig, out_dir: Path,
                  seed: int, progress: bool = True):
    """The configured TRL trainer on `data`, starting from `model` (nothing trained yet)."""
    args = trl_arguments(stage, model, out_dir / "trl", seed, progress)
    _, trainer_cls = trl_classes(stage.trainer)
    tokenizer = load_tokenizer(model.path)
    extra = {}
    if stage.trainer in ("dpo", "ropo"):
        extra["ref_model"] = load_trainable(model, master=False)
    if stage.trainer == "ropo":
        extra["alpha"] = stage.ropo_alpha or DEFAULT_ROPO_ALPHA
    return trainer_cls(model=load_trainable(model), args=args, processing_class=tokenizer,
                       train_dataset=preference_dataset(data, tokenizer), **extra)


def train_first_stage(stage: FirstStage, model: ModelConfig, data: DataConfig,
                      out_dir: str | Path, seed: int, progress: bool = True) -> dict:
    """Train (or resume), save <out_dir>/model and the loss log; returns a summary."""
    out_dir = Path(out_dir)
    trainer = build_trainer(stage, model, data, out_dir, seed, progress)
    resume = last_checkpoint(out_dir / "trl")
    result = trainer.train(resume_from_checkpoint=resume)
    final = out_dir / "model"
    trainer.save_model(str(final))
    trainer.processing_class.save_pretrained(str(final))
    fileio.write_json(out_dir / "log_history.json", trainer.state.log_history)
    return {"model": str(final), "trainer": stage.trainer, "steps": result.global_step,
            "train_loss": result.training_loss, "resumed_from": resume,
            "pairs": len(trainer.train_dataset)}
