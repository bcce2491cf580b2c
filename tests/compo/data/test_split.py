import json

import torch

from compo.config import DataConfig, ModelConfig, SplitConfig
from compo.data.split import noisy_mask, split
from compo.fileio import read_jsonl


def test_noisy_rules():
    margins = torch.tensor([-5.0, -1.0, 0.0, 2.0, 3.0, 4.0])
    assert noisy_mask(margins, 3.0, "abs").tolist() == [False, True, True, True, True, False]
    assert noisy_mask(margins, 3.0, "reference").tolist() == [False, False, False, True, False,
                                                               False]


def test_split_writes_both_files_and_a_report(tmp_path, model_dir, pairs_file):
    from compo.data.encoding import load_tokenized
    from compo.model.loading import load_model, load_tokenizer
    from compo.model.scoring import score_pairs

    config = SplitConfig(model=ModelConfig(path=str(model_dir)),
                         data=DataConfig(path=str(pairs_file)), delta=0.5,
                         output_dir=str(tmp_path / "out"))
    report = split(config)
    noisy = read_jsonl(tmp_path / "out/noisy.jsonl")
    clean = read_jsonl(tmp_path / "out/clean.jsonl")
    assert report["noisy"] == len(noisy) and report["clean"] == len(clean)
    assert len(noisy) + len(clean) == 4
    tokenizer = load_tokenizer(model_dir)
    pairs, _ = load_tokenized(config.data, tokenizer)
    chosen, rejected = score_pairs(load_model(config.model), pairs, tokenizer.pad_token_id)
    margins = (chosen - rejected).tolist()
    assert sorted(abs(row["margin"]) <= 0.5 for row in noisy) == [True] * len(noisy)
    written = sorted(round(row["margin"], 6) for row in noisy + clean)
    assert written == sorted(round(margin, 6) for margin in margins)
    saved = json.loads((tmp_path / "out/report.json").read_text())
    assert sum(saved["histogram"]["counts"]) == 4 and saved["delta"] == 0.5
    assert saved["margin_quantiles"]["0.5"] == report["margin_quantiles"]["0.5"]
