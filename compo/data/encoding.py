"""Turn validated preference pairs into token ids with the configured limits."""

from __future__ import annotations

from compo.config import DataConfig
from compo.data.formats import LoadReport, PreferencePair, TokenizedPair, load_pairs, render
from compo.errors import DataError


def encode_prompt(text: str, tokenizer) -> list[int]:
    """Prompt ids; BOS is prepended when the tokenizer has one and the text lacks it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def encode_completion(text: str, tokenizer, append_eos: bool) -> list[int]:
    """Completion ids, tokenized on their own so they are exactly those after the prompt."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if append_eos and eos is not None and (not ids or ids[-1] != eos):
        ids = [*ids, eos]
    return ids


def encode_pair(pair: PreferencePair, tokenizer, config: DataConfig) -> TokenizedPair | None:
    """Token ids of a pair; None when it is too long and config says skip."""
    prompt, chosen, rejected = render(pair, tokenizer)
    prompt_ids = encode_prompt(prompt, tokenizer)
    chosen_ids = encode_completion(chosen, tokenizer, config.append_eos)
    rejected_ids = encode_completion(rejected, tokenizer, config.append_eos)
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
