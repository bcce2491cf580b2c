"""Tiny random models of the decoder families transformers ships (no download), each with
what its head does made visible: a non-zero lm_head bias (Phi), a logit scale (Cohere,
Granite), a soft-cap small enough to bite (Gemma-2/3), logits of order one."""

from __future__ import annotations

import dataclasses
import random

import torch

VOCAB = 128
HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 64
HEAD_STD = 2.0  # logit spread at initialisation (random tiny models start near uniform)
COMMON = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
          "num_attention_heads": HEADS, "intermediate_size": FFN,
          "max_position_embeddings": 256, "pad_token_id": 0, "bos_token_id": 1,
          "eos_token_id": 2}
LLAMA_LIKE = {**COMMON, "num_key_value_heads": KV_HEADS, "tie_word_embeddings": False}

# family -> (model_type, config fields): what from_config builds
FAMILIES: dict[str, tuple[str, dict]] = {
    "Llama": ("llama", LLAMA_LIKE),
    "Mistral": ("mistral", LLAMA_LIKE),
    "Qwen2": ("qwen2", LLAMA_LIKE),
    "Qwen3": ("qwen3", {**LLAMA_LIKE, "head_dim": HIDDEN // HEADS}),
    "Gemma": ("gemma", {**LLAMA_LIKE, "head_dim": HIDDEN // HEADS}),
    "Gemma2": ("gemma2", {**LLAMA_LIKE, "head_dim": HIDDEN // HEADS,
                          "final_logit_softcapping": 1.5}),
    "Gemma3 text": ("gemma3_text", {**LLAMA_LIKE, "head_dim": HIDDEN // HEADS,
                                    "final_logit_softcapping": 1.5}),
    "Phi": ("phi", {**COMMON, "num_key_value_heads": KV_HEADS}),
    "Phi3": ("phi3", {**LLAMA_LIKE}),
    "GPT-2": ("gpt2", {"vocab_size": VOCAB, "n_embd": HIDDEN, "n_layer": LAYERS,
                       "n_head": HEADS, "n_positions": 256, "bos_token_id": 1,
                       "eos_token_id": 2}),
    "GPT-NeoX": ("gpt_neox", {**COMMON, "tie_word_embeddings": False}),
    "OPT": ("opt", {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                    "num_attention_heads": HEADS, "ffn_dim": FFN,
                    "word_embed_proj_dim": HIDDEN, "max_position_embeddings": 256,
                    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    "Falcon": ("falcon", {**COMMON, "new_decoder_architecture": True,
                          "num_kv_heads": KV_HEADS}),
    "Cohere": ("cohere", {**LLAMA_LIKE, "logit_scale": 0.5}),
    "Granite": ("granite", {**LLAMA_LIKE, "logits_scaling": 4.0}),
    "OLMo2": ("olmo2", LLAMA_LIKE),
    "StableLM": ("stablelm", LLAMA_LIKE),
}


def build_family(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The tiny random model of a family, eval mode: a stronger head so that its logits
    spread, and a random lm_head bias where the family has one."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, fields = FAMILIES[name]
    config = AutoConfig.for_model(model_type, **fields)
    config._attn_implementation = "eager"  # the same kernels in float32 and float64
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    head = model.get_output_embeddings()
    with torch.no_grad():
        if head.weight is model.get_input_embeddings().weight:
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
            model.config.tie_word_embeddings = False
        head.weight.normal_(0.0, HEAD_STD / HIDDEN**0.5)
        if head.bias is not None:
            head.bias.normal_(0.0, 1.0)
    return model.to(dtype)


# --- every causal-LM type the installed transformers ships (compo conformance) ---

SWEEP_HIDDEN, SWEEP_HEADS, SWEEP_KV_HEADS = 64, 4, 2
SWEEP_HEAD_DIM = SWEEP_HIDDEN // SWEEP_HEADS
VOCAB_CUT = 8  # an unpadded-vocabulary field is set this far below the vocabulary
BIAS_STD = 0.5  # every bias parameter, drawn at random
MULTIPLIER_RANGE = (0.5, 2.0)  # float fields named like a multiplier or scaling, at random
SOFTCAP_RANGE = (1.0, 3.0)  # soft-caps: small enough to bite on logits of order one
CAP_WORDS = frozenset({"cap", "softcap", "softcapping"})
# size fields (any spelling a config uses) -> tiny value; only where the config has them
SWEEP_SIZES = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "n_embed",
                     "d_embed", "hidden_dim", "model_dim", "word_embed_proj_dim"),
                    SWEEP_HIDDEN),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads",
                     "decoder_attention_heads"), SWEEP_HEADS),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "d_ff", "decoder_ffn_dim", "n_inner",
                     "moe_intermediate_size", "shared_expert_intermediate_size",
                     "expert_intermediate_size", "ffn_hidden_size"), FFN),
    **dict.fromkeys(("encoder_ffn_dim", "dff", "d_inner", "dim_ff", "intermediate_size_mlp",
                     "first_dense_intermediate_size", "shared_intermediate_size",
                     "dense_intermediate_size", "moe_shared_expert_intermediate_size"), FFN),
    **dict.fromkeys(("linear_head_dim", "linear_key_head_dim", "linear_value_head_dim",
                     "index_head_dim", "dim_head"), SWEEP_HEAD_DIM),
    **dict.fromkeys(("linear_num_heads", "linear_num_value_heads"), SWEEP_HEADS),
    "linear_num_key_heads": SWEEP_KV_HEADS, "o_lora_rank": 32,
    "vocab_size": VOCAB, "rotary_dim": SWEEP_HEAD_DIM // 2,
    "max_position_embeddings": 256, "n_positions": 256, "kv_lora_rank": 16,
    "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
# the same where the config leaves them unset (None): sizes the model would not derive
SWEEP_UNSET_SIZES = {
    **dict.fromkeys(("num_experts", "n_routed_experts", "num_local_experts",
                     "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "num_experts_per_token"), 2),
    **dict.fromkeys(("n_group", "topk_group"), 1),
    "head_dim": SWEEP_HEAD_DIM,
}
LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers",
                "encoder_layers", "num_decoder_layers")
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
MAMBA_FIELDS = {"mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_chunk_size": 16}
# what the generic shrink cannot infer (hybrid layer patterns, size constraints): per type
TYPE_FIELDS = {
    "bamba": {"attn_layer_indices": [1], **MAMBA_FIELDS},
    "falcon_h1": {**MAMBA_FIELDS, "mamba_d_head": 8, "mamba_d_ssm": 64},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"], **MAMBA_FIELDS},
    "nemotron_h": {"ssm_state_size": 16, "mamba_num_heads": 8, "mamba_head_dim": 16,
                   "chunk_size": 16},
    "mamba2": {"expand": 1, "n_groups": 1, "state_size": 16, "chunk_size": 16},
    "zamba2": {"chunk_size": 16},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
              "expert_layer_offset": 1},
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "xmod": {"default_language": "en_XX"},
    "reformer": {"axial_pos_embds_dim": [32, 32], "axial_pos_shape": [16, 16]},
    "xlstm": {"qk_dim_factor": 1.0},
    "zaya": {"num_experts_per_tok": 1},
    "dots3_note": {"num_key_value_heads": SWEEP_HEADS},
    "dots3_note_text": {"num_key_value_heads": SWEEP_HEADS},
}


def causal_lm_types() -> list[str]:
    """Every model type transformers' AutoModelForCausalLM maps to a class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _default(config, field):
    """A config field's default value (None where reading it raises)."""
    try:
        return getattr(config, field.name)
    except Exception:  # per-layer attributes of heterogeneous configs refuse global reads
        return None


def _layer_fields(defaults: dict, layers: str | None) -> dict:
    """The layer count and every per-layer list cut to a few layers that keep one of each
    distinct kind (e.g. sliding and full attention)."""
    count = defaults.get(layers)
    per_layer = {k: v for k, v in defaults.items()  # not lists of layer indices
                 if isinstance(v, list) and isinstance(count, int) and len(v) == count
                 and not (all(type(x) is int for x in v) and len(set(v)) == len(v))}
    if layers is None:
        return {}
    kinds = [repr([v[i] for v in per_layer.values()]) for i in range(count or 0)]
    picked = sorted({kinds.index(kind) for kind in kinds})
    picked += [i for i in range(count or 0) if i not in picked][: max(0, LAYERS - len(picked))]
    picked.sort()
    return {layers: max(len(picked), LAYERS),
            **{k: [v[i] for i in picked] for k, v in per_layer.items()}}


def _random_value(name: str, rng: random.Random) -> float:
    """A multiplier, scaling or soft-cap drawn at random (3 decimals, for the table)."""
    low, high = SOFTCAP_RANGE if CAP_WORDS & set(name.split("_")) else MULTIPLIER_RANGE
    return round(rng.uniform(low, high), 3)


def _tiny_fields(config_class, rng: random.Random) -> dict:
    """Constructor fields of a tiny config: sizes shrunk, every multiplier, scaling and
    soft-cap random, every bias flag on, sub-configs (text, vision, ...) tiny too."""
    from transformers import PreTrainedConfig

    from compo.model.head import SCALE_WORDS

    fields = {f.name: f for f in dataclasses.fields(config_class)}
    default = config_class()
    defaults = {name: _default(default, f) for name, f in fields.items()}
    resolve = config_class.attribute_map
    counts = [resolve.get(k, k) for k in LAYER_COUNTS if resolve.get(k, k) in fields]
    out = _layer_fields(defaults, counts[0] if counts else None)
    out |= {name: out[counts[0]] for name in counts if type(defaults[name]) is int}
    for key, value in (SWEEP_SIZES | SWEEP_UNSET_SIZES).items():
        name, unset = key if key in fields else resolve.get(key, key), key in SWEEP_UNSET_SIZES
        if name in fields and name not in out and (
                type(defaults[name]) is int or unset and defaults[name] is None):
            out[name] = value
    heads = defaults.get(next((resolve.get(k, k) for k in ("num_attention_heads", "n_head")
                               if resolve.get(k, k) in fields), ""))
    for name in {resolve.get(k, k) for k in KV_HEADS} & fields.keys():
        if type(defaults[name]) is int or defaults[name] is None:
            out[name] = SWEEP_HEADS if defaults[name] == heads else SWEEP_KV_HEADS
    for name, field in fields.items():
        value, words = defaults[name], set(name.split("_"))
        if words & SCALE_WORDS and (isinstance(value, float)
                                    or value is None and "float" in str(field.type)):
            out[name] = _random_value(name, rng)
        elif isinstance(value, bool) and "bias" in words and not name.startswith("no_"):
            out[name] = True
        elif "vocab" in words and "unpadded" in words:
            out[name] = VOCAB - VOCAB_CUT
        elif "vocab" in words and type(value) is int and value > VOCAB:  # e.g. hash vocabularies
            out[name] = VOCAB
        elif isinstance(value, PreTrainedConfig):
            out[name] = type(value)(**_tiny_fields(type(value), rng))
    return out


def tiny_config(model_type: str, seed: int = 0):
    """The tiny config of a causal-LM type, with TYPE_FIELDS and is_decoder=True on top
    (encoder families' *ForCausalLM are causal only as decoders)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    fields = _tiny_fields(config_class, random.Random(seed))
    return config_class(**{**fields, "is_decoder": True, **TYPE_FIELDS.get(model_type, {})})


def build_type(model_type: str, seed: int = 0):
    """A tiny random model of a causal-LM type (eager attention, eval mode), its lm_head
    untied and spread, every bias and every extra lm_head parameter random."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, seed)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                             experts_implementation="eager").eval()
    generator = torch.Generator().manual_seed(seed)
    head = model.get_output_embeddings()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1] == "bias":
                param.copy_(torch.randn(param.shape, generator=generator) * BIAS_STD)
        if isinstance(head, torch.nn.Linear):
            inputs = model.get_input_embeddings()
            if head.weight is getattr(inputs, "weight", None):
                head.weight = torch.nn.Parameter(head.weight.detach().clone())
                model.config.tie_word_embeddings = False
            head.weight.normal_(0.0, HEAD_STD / head.weight.shape[1] ** 0.5, generator=generator)
            for name, param in head.named_parameters():  # e.g. a learned per-token scale
                if name not in ("weight", "bias"):
                    param.mul_(torch.exp(torch.randn(param.shape, generator=generator) / 2))
    return model
