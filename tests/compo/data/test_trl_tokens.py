"""compo's token ids are TRL's, for every tokenizer style and data shape users have:
explicit and conversational demo pairs, HH-RLHF multi-turn transcripts (implicit prompt)
and UltraFeedback rows (a text prompt next to whole conversations)."""

import pytest

from compo.config import DataConfig
from compo.data.encoding import load_tokenized
from compo.demo.pairs import make_pairs
from compo.demo.tiny import build_llama
from compo.pipeline.first_stage import preference_dataset
from tests.compo.data.styles import STYLES
from tests.conftest import write_jsonl

pytest.importorskip("trl")  # the `train` extra

TURNS = [("Hi, can you help me with maths?", "Of course. What do you need?"),
         ("What is 12 plus 30?", "12 plus 30 is 42."),
         ("And 7 times 6?", None)]


def hh_rows() -> list[dict]:
    """HH-RLHF style: whole multi-turn transcripts, the last assistant turn differing."""
    rows = []
    for last_good, last_bad in (("7 times 6 is 42.", "No idea, sorry."),
                                ("It is 42.", "It is 36.")):
        history = "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in TURNS[:-1])
        prefix = history + f"\n\nHuman: {TURNS[-1][0]}\n\nAssistant:"
        rows.append({"chosen": f"{prefix} {last_good}", "rejected": f"{prefix} {last_bad}"})
    return rows


def ultrafeedback_rows() -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized style: prompt text + whole conversations."""
    return [{"prompt": p, "chosen": [{"role": "user", "content": p},
                                     {"role": "assistant", "content": c}],
             "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
             "score_chosen": 8.0, "score_rejected": 3.0}
            for p, c, r in (("Name a colour.", "Blue.", "A dog barks."),
                            ("What is 3 plus 4?", "3 plus 4 is 7.", "It is 9."))]


def conversational(row: dict) -> dict:
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
            "rejected": [{"role": "assistant", "content": row["rejected"].strip()}]}


DEMO = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in make_pairs()]
SHAPES = {"explicit": DEMO, "conversational": [conversational(r) for r in DEMO],
          "HH multi-turn": hh_rows(), "UltraFeedback": ultrafeedback_rows()}


@pytest.fixture(scope="module", params=list(STYLES))
def tokenizer(request):
    texts = [row[k] for row in DEMO for k in ("prompt", "chosen", "rejected")]
    texts += [row[k] for row in hh_rows() for k in ("chosen", "rejected")]
    return STYLES[request.param](texts * 2)


def trl_ids(tokenizer, data: DataConfig, tmp_path) -> list[tuple[list, list, list]]:
    """What TRL's DPOTrainer makes of the rows the first stage hands it."""
    from trl import DPOConfig, DPOTrainer

    model, reference = (build_llama(len(tokenizer), hidden=16, layers=1, heads=2)
                        for _ in range(2))
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                     max_length=None, precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, processing_class=tokenizer,
                         train_dataset=preference_dataset(data, tokenizer))
    rows = trainer.train_dataset
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_prompt_and_completion_ids_equal_trls(tokenizer, shape, tmp_path):
    data = DataConfig(path=str(write_jsonl(tmp_path / "pairs.jsonl", SHAPES[shape])))
    ours = [(p.prompt_ids, p.chosen_ids, p.rejected_ids)
            for p in load_tokenized(data, tokenizer)[0]]
    assert len(ours) == len(SHAPES[shape])
    assert ours == trl_ids(tokenizer, data, tmp_path)


def test_hh_and_ultrafeedback_prompts_are_the_shared_turns(tmp_path):
    data = DataConfig(path=str(write_jsonl(tmp_path / "hh.jsonl", hh_rows())))
    tokenizer = STYLES["byte-level with BOS (Llama-3)"]([r["chosen"] for r in hh_rows()])
    pairs = load_tokenized(data, tokenizer)[0]
    assert all(p.row["prompt"].endswith("\n\nHuman: And 7 times 6?\n\nAssistant:")
               for p in pairs)
    assert pairs[0].row["chosen"] == " 7 times 6 is 42."
    uf = DataConfig(path=str(write_jsonl(tmp_path / "uf.jsonl", ultrafeedback_rows())))
    first = load_tokenized(uf, STYLES["byte-level without BOS (Qwen)"](["Blue."]))[0][0]
    assert first.row["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert first.row["chosen"] == [{"role": "assistant", "content": "Blue."}]
