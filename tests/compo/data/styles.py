"""Local tokenizers that mimic the real ones' styles (no download), each with a chat
template in the style of its family."""

from __future__ import annotations

from collections.abc import Callable, Iterable

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
    "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}")
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
    "{% endif %}")


def _fast(core, template: str, specials: dict, **names):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, chat_template=template, **names)


def _bos_processor(core, bos: str):
    from tokenizers import processors

    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                         special_tokens=[(bos, core.token_to_id(bos))])


def sentencepiece_style(texts: Iterable[str], vocab: int = 400):
    """Llama-2 / Mistral, as their tokenizer.json: every text gets a '▁' prepended and its
    spaces become '▁' (SentencePiece's dummy prefix), byte fallback, BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    specials = ["<unk>", "<s>", "</s>"]
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                            normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                      decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    core.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, show_progress=False))
    core.post_processor = _bos_processor(core, "<s>")
    return _fast(core, LLAMA2_TEMPLATE, specials, bos_token="<s>", eos_token="</s>",
                 unk_token="<unk>", pad_token="</s>")


def _byte_level(texts, vocab, specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return core


def llama3_style(texts: Iterable[str], vocab: int = 500):
    """Llama-3: byte-level BPE, <|begin_of_text|> added, header tokens."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    core = _byte_level(texts, vocab, specials)
    core.post_processor = _bos_processor(core, "<|begin_of_text|>")
    return _fast(core, LLAMA3_TEMPLATE, specials, bos_token="<|begin_of_text|>",
                 eos_token="<|eot_id|>", pad_token="<|end_of_text|>")


def qwen_style(texts: Iterable[str], vocab: int = 500):
    """Qwen: byte-level BPE, no BOS at all, ChatML."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = _byte_level(texts, vocab, specials)
    return _fast(core, CHATML_TEMPLATE, specials, eos_token="<|im_end|>",
                 pad_token="<|endoftext|>")


def gemma_style(texts: Iterable[str], vocab: int = 400):
    """Gemma: spaces as '▁' with no prefix added, byte fallback, <bos>, turn markers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.normalizer = normalizers.Replace(" ", "▁")
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                      decoders.Fuse()])
    core.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, show_progress=False))
    core.post_processor = _bos_processor(core, "<bos>")
    return _fast(core, GEMMA_TEMPLATE, specials, bos_token="<bos>", eos_token="<eos>",
                 unk_token="<unk>", pad_token="<pad>")


STYLES: dict[str, Callable] = {"sentencepiece (Llama-2, Mistral)": sentencepiece_style,
                               "byte-level with BOS (Llama-3)": llama3_style,
                               "byte-level without BOS (Qwen)": qwen_style,
                               "Gemma": gemma_style}
