"""Preference formats, tokenization boundaries and every bad-input case."""

import pytest

from compo.config import DataConfig
from compo.data.encoding import encode_pair, load_tokenized
from compo.data.formats import load_pairs, split_shared_prefix
from compo.errors import DataError
from tests.conftest import write_jsonl

GOOD = {"prompt": "What is 2 plus 3?", "chosen": " 2 plus 3 is 5.", "rejected": " 2 plus 3 is 6."}


def config_for(path, **kwargs) -> DataConfig:
    return DataConfig(path=str(path), **kwargs)


def test_explicit_prompt_completion_tokens_follow_the_prompt(tmp_path, tokenizer):
    pairs, _ = load_tokenized(config_for(write_jsonl(tmp_path / "p.jsonl", [GOOD])), tokenizer)
    pair = pairs[0]
    assert pair.prompt_ids[0] == tokenizer.bos_token_id
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(pair.chosen_ids[:-1]) == GOOD["chosen"]
    assert tokenizer.decode(pair.prompt_ids[1:]) == GOOD["prompt"]
    assert pair.source.endswith("p.jsonl:1")


def test_conversational_rows_use_the_chat_template(tmp_path, tokenizer):
    row = {"prompt": [{"role": "user", "content": "What is 2 plus 3?"}],
           "chosen": [{"role": "assistant", "content": "5"}],
           "rejected": [{"role": "assistant", "content": "6"}]}
    config = config_for(write_jsonl(tmp_path / "c.jsonl", [row]))
    pair = load_tokenized(config, tokenizer)[0][0]
    prompt = tokenizer.decode(pair.prompt_ids)
    assert prompt.endswith("<|assistant|>") and "What is 2 plus 3?" in prompt
    assert tokenizer.decode(pair.chosen_ids).startswith(" 5")
    assert tokenizer.decode(pair.rejected_ids).startswith(" 6")
    full = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True,
                                         return_dict=True)["input_ids"]
    assert list(full) == pair.prompt_ids + pair.chosen_ids


def test_implicit_prompt_hh_transcript(tmp_path, tokenizer):
    row = {"chosen": "\n\nHuman: hello there \n\nAssistant: hi, how can I help?",
           "rejected": "\n\nHuman: hello there \n\nAssistant: hello."}
    pairs, _ = load_pairs(config_for(write_jsonl(tmp_path / "i.jsonl", [row])))
    assert pairs[0].prompt == "\n\nHuman: hello there \n\nAssistant:"
    assert pairs[0].chosen == " hi, how can I help?" and pairs[0].rejected == " hello."


def test_implicit_prompt_never_splits_a_word_and_handles_messages():
    prompt, chosen, rejected = split_shared_prefix("The sky is blue", "The sky is blank", "s")
    assert (prompt, chosen, rejected) == ("The sky is ", "blue", "blank")
    user = {"role": "user", "content": "hi"}
    a, b = {"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}
    assert split_shared_prefix([user, a], [user, b], "s") == ([user], [a], [b])


def test_saved_hf_dataset_loads_with_split(tmp_path, tokenizer):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD, GOOD])}).save_to_disk(
        str(tmp_path / "ds"))
    with pytest.raises(DataError, match="set data.split"):
        load_pairs(config_for(tmp_path / "ds"))
    pairs, report = load_tokenized(config_for(tmp_path / "ds", split="train"), tokenizer)
    assert len(pairs) == 2 and report.rows == 2 and "[train]#1" in pairs[1].source


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x", "chosen": "y"}, "missing field 'rejected'"),
    ({"prompt": "x", "chosen": " ", "rejected": "z"}, "empty response"),
    ({"prompt": "x", "chosen": "same", "rejected": "same"}, "chosen == rejected"),
    (b'{"prompt": "x", "chosen": "\xff\xfe", "rejected": "z"}\n', "not UTF-8"),
    (b"{not json\n", "not valid JSON"),
    ({"prompt": "x", "chosen": ["y"], "rejected": "z"}, "all be strings"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}"):
        load_pairs(config_for(path))


def test_bad_rows_can_be_skipped_and_counted(tmp_path, tokenizer):
    rows = [GOOD, {"prompt": "x", "chosen": "y"}, b"\xff\n", {**GOOD, "rejected": GOOD["chosen"]}]
    pairs, report = load_tokenized(
        config_for(write_jsonl(tmp_path / "b.jsonl", rows), bad_rows="skip"), tokenizer)
    assert len(pairs) == 1 and report.rows == 4 and sum(report.skipped.values()) == 3


def test_rows_over_the_limits(tmp_path, tokenizer):
    long_row = {**GOOD, "chosen": " five" * 40}
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD, long_row])
    with pytest.raises(DataError, match="long.jsonl:2.*max_completion_tokens=16"):
        load_tokenized(config_for(path, max_completion_tokens=16), tokenizer)
    pairs, report = load_tokenized(config_for(path, max_completion_tokens=16, too_long="skip"),
                                   tokenizer)
    assert len(pairs) == 1 and report.skipped["too long"] == 1
    pairs, _ = load_tokenized(config_for(path, max_completion_tokens=16, too_long="truncate"),
                              tokenizer)
    assert len(pairs[1].chosen_ids) == 16


def test_missing_file_is_explained(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(config_for(tmp_path / "nope.jsonl"))


def test_chosen_equal_after_tokenization_is_rejected(tokenizer):
    from compo.data.formats import PreferencePair

    pair = PreferencePair("x", "abc", "abc ", "f:1")
    tokenizer_ids = tokenizer("abc", add_special_tokens=False)["input_ids"]
    if tokenizer_ids == tokenizer("abc ", add_special_tokens=False)["input_ids"]:
        with pytest.raises(DataError, match="tokenize identically"):
            encode_pair(pair, tokenizer, DataConfig(path="x"))
