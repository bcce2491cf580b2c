"""Token ids of validated preference pairs, by TRL's rule, with the configured limits.

The rule is TRL's DPO tokenization (trl.DPOTrainer, 1.x), so the split, the oracle, the
first stage, evaluation and generation prompts all see the tokens TRL trains on:
  text:     prompt, prompt + chosen (+ EOS) and prompt + rejected (+ EOS) are tokenized
            as the tokenizer does by default (its BOS, if it adds one, included);
  messages: the chat template renders the prompt (with the generation prompt) and each
            whole conversation;
the prompt is the longest common prefix of the three token lists, each completion what
follows it. Tokenizing a completion on its own would differ under SentencePiece-style
tokenizers (a stray '▁' token at its start).
"""

from __future__ import annotations

from compo.config import DataConfig
from compo.data.formats import LoadReport, PreferencePair, TokenizedPair, load_pairs
from compo.errors import DataError


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    """How many leading tokens two lists share."""
    length = 0
    for token, other_token in zip(ids, other, strict=False):
        if token != other_token:
            break
        length += 1
    return length


def tokenize(tokenizer, value: str | list, generation_prompt: bool = False) -> list[int]:
    """Ids of a text (special tokens as the tokenizer adds them) or of messages (through
    the chat template), as TRL tokenizes each part."""
    if isinstance(value, list):
        rendered = tokenizer.apply_chat_template(value, tokenize=True, return_dict=True,
                                                 add_generation_prompt=generation_prompt)
        return list(rendered["input_ids"])
    return list(tokenizer(value)["input_ids"])


def with_eos(text: str, tokenizer, append_eos: bool) -> str:
    """TRL ends each text response with the EOS token (messages: the template does)."""
    eos = tokenizer.eos_token
    if append_eos and eos and not text.endswith(eos):
        return text + eos
    return text


def pair_ids(pair: PreferencePair, tokenizer, append_eos: bool
             ) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids of a pair by TRL's rule."""
    if isinstance(pair.chosen, list) and getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{pair.source}: conversational row but the tokenizer has no chat "
                        "template; use a chat model's tokenizer or plain-text rows")
    prompt = tokenize(tokenizer, pair.prompt, generation_prompt=True)
    if isinstance(pair.chosen, list):
        whole = [tokenize(tokenizer, pair.prompt + r) for r in (pair.chosen, pair.rejected)]
    else:
        whole = [tokenize(tokenizer, pair.prompt + with_eos(r, tokenizer, append_eos))
                 for r in (pair.chosen, pair.rejected)]
    cut = min(common_prefix_length(prompt, ids) for ids in whole)
    if cut == 0:
        raise DataError(f"{pair.source}: no prompt tokens (an empty prompt and a tokenizer "
                        "that adds no BOS): the first response token has nothing to be "
                        "predicted from; give the row a prompt or set data.bad_rows: skip")
    return prompt[:cut], whole[0][cut:], whole[1][cut:]


def encode_pair(pair: PreferencePair, tokenizer, config: DataConfig) -> TokenizedPair | None:
    """Token ids of a pair; None when it is too long and config says skip."""
    prompt_ids, chosen_ids, rejected_ids = pair_ids(pair, tokenizer, config.append_eos)
    if not chosen_ids or not rejected_ids:
        raise DataError(f"{pair.source}: a response has no tokens after tokenization")
    if chosen_ids == rejected_ids:
        raise DataError(f"{pair.source}: chosen and rejected tokenize identically")
    too_long = (
        len(prompt_ids) > config.max_prompt_tokens
        or max(len(chosen_ids), len(rejected_ids)) > config.max_completion_tokens
    )
    if too_long:
        if config.too_long == "skip":
            return None
        if config.too_long == "error":
            raise DataError(
                f"{pair.source}: {len(prompt_ids)} prompt / {len(chosen_ids)} chosen / "
                f"{len(rejected_ids)} rejected tokens exceed data.max_prompt_tokens="
                f"{config.max_prompt_tokens} or data.max_completion_tokens="
                f"{config.max_completion_tokens}; raise the limits or set data.too_long "
                "to truncate or skip")
        prompt_ids = prompt_ids[-config.max_prompt_tokens:]
        chosen_ids = chosen_ids[: config.max_completion_tokens]
        rejected_ids = rejected_ids[: config.max_completion_tokens]
    row = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, pair.source, row)


def load_tokenized(config: DataConfig, tokenizer) -> tuple[list[TokenizedPair], LoadReport]:
    """Load, validate and tokenize a preference file; skips are counted in the report."""
    pairs, report = load_pairs(config)
    encoded = []
    for pair in pairs:
        try:
            item = encode_pair(pair, tokenizer, config)
        except DataError:
            if config.bad_rows == "error":
                raise
            report.skipped["tokenization"] += 1
            continue
        if item is None:
            report.skipped["too long"] += 1
        else:
            encoded.append(item)
    report.kept = len(encoded)
    if not encoded:
        raise DataError(f"{config.path}: no usable preference pairs "
                        f"(report: {report.as_dict()})")
    return encoded, report
