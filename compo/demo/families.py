"""Tiny random models of the decoder families transformers ships (no download), each with
what its head does made visible: a non-zero lm_head bias (Phi), a logit scale (Cohere,
Granite), a soft-cap small enough to bite (Gemma-2/3), logits of order one."""

from __future__ import annotations

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
