"""Load a local Hugging Face causal LM and expose its output layer for perturbation."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from compo.config import ModelConfig
from compo.errors import ModelError
from compo.model.head import output_layer, verified_head

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


SHARDED = "auto"  # model.device: transformers' device_map over the visible devices


def load_tokenizer(path: str | Path):
    """Tokenizer from a local directory; a missing pad token falls back to EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: ModelConfig) -> nn.Module:
    """Causal LM from a local directory, in eval mode, output layer untied; device "auto":
    layers spread over every visible GPU (the body of a model no one GPU holds)."""
    from transformers import AutoModelForCausalLM

    path = Path(config.path)
    if not (path / "config.json").is_file():
        raise ModelError(f"model.path={path}: no config.json there; point model.path at a "
                         "directory written by save_pretrained (downloads are disabled)")
    sharded = {"device_map": SHARDED} if config.device == SHARDED else {}
    model, info = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=DTYPES[config.dtype], local_files_only=True, output_loading_info=True,
        **sharded)
    head_name = _output_param_name(model, str(path))
    if head_name in info["missing_keys"] and not is_tied(model):
        raise ModelError(f"model.path={path}: the checkpoint has no output layer "
                         f"({head_name} missing; it would be random). Use a causal LM "
                         "checkpoint (*ForCausalLM), not a bare base model")
    model = prepare_model(model if sharded else model.to(config.device), str(path))
    verified_head(model, f"model.path={path}")
    return model


def _output_param_name(model: nn.Module, name: str) -> str:
    """Parameter name of the output layer's weight, e.g. 'lm_head.weight'."""
    weight = output_layer(model, name).weight
    for param_name, param in model.named_parameters(remove_duplicate=False):
        if param is weight:
            return param_name
    raise ModelError(f"{name}: output layer weight is not a registered parameter")


def prepare_model(model: nn.Module, name: str = "model") -> nn.Module:
    """Eval mode, no grads, output layer checked and untied from the input embedding."""
    model.eval().requires_grad_(False)
    output_layer(model, name)
    if untie_output_layer(model):
        log.warning("%s: output layer was tied to the input embedding; untied it so that "
                    "only the output layer moves", name)
    return model



def is_tied(model: nn.Module) -> bool:
    """Whether the output layer shares its weight with the input embedding."""
    inputs = model.get_input_embeddings()
    head = output_layer(model)
    return inputs is not None and head.weight.data_ptr() == inputs.weight.data_ptr()


def untie_output_layer(model: nn.Module) -> bool:
    """Give the output layer its own copy of the weight; True if it was tied."""
    if not is_tied(model):
        return False
    head = output_layer(model)
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):  # transformers 5 keeps the tie mapping here
        model.all_tied_weights_keys = {}
    return True


def model_device(model: nn.Module) -> torch.device:
    """Device of the output layer (where the oracle's math runs)."""
    return output_layer(model).weight.device
