"""Edge cases of TRL's tokenization rule: empty prompts with and without a BOS."""

import pytest

from compo.config import DataConfig
from compo.data.encoding import load_tokenized
from compo.errors import DataError
from tests.compo.data.styles import llama3_style, qwen_style
from tests.conftest import write_jsonl

ROWS = [{"prompt": "", "chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"prompt": "What color is the sky?", "chosen": " Blue.", "rejected": " Green."}]
TEXTS = [text for row in ROWS for text in row.values()] * 3


def test_an_empty_prompt_without_bos_is_refused_naming_the_row(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(DataError, match=r"p.jsonl:1: no prompt tokens .*adds no BOS"):
        load_tokenized(DataConfig(path=str(path)), qwen_style(TEXTS))
    pairs, report = load_tokenized(DataConfig(path=str(path), bad_rows="skip"),
                                   qwen_style(TEXTS))
    assert len(pairs) == 1 and report.skipped == {"tokenization": 1}


def test_an_empty_prompt_with_bos_is_the_bos(tmp_path):
    tokenizer = llama3_style(TEXTS)
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    first = load_tokenized(DataConfig(path=str(path)), tokenizer)[0][0]
    assert first.prompt_ids == [tokenizer.bos_token_id]
    assert tokenizer.decode(first.chosen_ids) == "The sky is blue.<|eot_id|>"
