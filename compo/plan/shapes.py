"""A model's shapes from its config.json alone (no weights): built on torch's meta device,
so every family transformers knows is counted exactly, tensor by tensor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compo.config import PerturbConfig
from compo.errors import ModelError

MODELS = Path(__file__).parent / "models"  # real config.json values of known checkpoints


@dataclass(frozen=True)
class ModelShapes:
    """What the plan needs of a model: element counts, never values."""

    name: str
    params: int  # every weight once (a tied output layer counted once)
    tied: bool  # the output layer shares the input embedding (loading unties it: +V*d)
    vocab: int  # V: rows of the output layer
    hidden: int  # d
    layers: int  # decoder layers
    moved_rows: int  # R: rows of the moved stack [R, d] (compo/model/layout.py)
    tail_params: int  # every weight of the last k decoder layers (rerun per direction)
    capped: bool  # the head soft-caps its logits (the oracle keeps the base logits too)
    kv_elements_per_token: int  # K and V elements one token adds to a cache (all layers)
    heads: int  # attention heads (eager attention holds heads x T scores per token)
    widest: int  # the widest linear output of a decoder layer (the MLP's intermediate)

    @property
    def loaded_params(self) -> int:
        """Elements load_model holds: a tied output layer gets its own copy."""
        return self.params + self.vocab * self.hidden * self.tied


def known_models() -> list[str]:
    """Names `--model` accepts besides a directory (compo/plan/models/*.json)."""
    return sorted(path.stem for path in MODELS.glob("*.json"))


def config_file(model: str) -> Path:
    """config.json of a directory, or of a known model's name."""
    named = MODELS / f"{model}.json"
    if named.is_file() and not Path(model).is_dir():
        return named
    path = Path(model) / "config.json"
    if not path.is_file():
        raise ModelError(f"--model {model}: no config.json there; give a model directory "
                         f"(only its config.json is read) or one of {', '.join(known_models())}")
    return path


def read_config(path: Path):
    """transformers' config object from a config.json (local file only)."""
    from transformers import AutoConfig

    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: not readable JSON ({error}); fix or replace the file") \
            from error
    kind = fields.get("model_type") if isinstance(fields, dict) else None
    if not kind:
        raise ModelError(f"{path}: no model_type field; copy config.json from the checkpoint")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError) as error:
        raise ModelError(f"{path}: model_type {kind!r} is not one this transformers knows; "
                         "fix model_type or upgrade transformers") from error


def meta_model(config, path: Path):
    """The causal LM of a config on the meta device (shapes only, no memory)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: model_type {config.model_type!r} has no causal LM in "
                         "this transformers; use a *ForCausalLM checkpoint") from error


def read_shapes(model: str, perturb: PerturbConfig | None = None) -> ModelShapes:
    """The shapes of `model` (a directory or a known name) with what compo.perturb moves."""
    from compo.model.head import head_of, output_layer
    from compo.model.layout import decoder_layers, layout_of
    from compo.service_oracle.memory import kv_bytes_per_token

    path = config_file(model)
    meta = meta_model(read_config(path), path)
    head = output_layer(meta, str(path))
    vocab, hidden = head.weight.shape
    layout = layout_of(meta, perturb, str(path))  # refuses k > layers, what cannot move
    layers = decoder_layers(meta, str(path))
    k = perturb.last_layers if perturb is not None else 0
    tail = layers[len(layers) - k:] if k else []
    return ModelShapes(
        name=model, params=sum(p.numel() for p in meta.parameters()),
        tied=meta.get_input_embeddings().weight is head.weight, vocab=vocab, hidden=hidden,
        layers=len(layers), moved_rows=layout.shape[0],
        tail_params=sum(p.numel() for layer in tail for p in layer.parameters()),
        capped=head_of(meta).cap is not None,
        kv_elements_per_token=kv_bytes_per_token(meta.config, torch.int8),
        heads=getattr(meta.config.get_text_config(), "num_attention_heads", 1),
        widest=max(m.out_features for m in layers[0].modules() if isinstance(m, nn.Linear)))
