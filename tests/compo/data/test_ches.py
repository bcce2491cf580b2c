"""CHES score: the formula, the hidden states it uses, the noisy rule, the split report."""

import pytest
import torch

from compo.config import DataConfig, ModelConfig, SplitConfig
from compo.data.ches import (
    ChesConfig,
    ches_criterion,
    ches_from_embeddings,
    ches_noisy_mask,
    ches_scores,
    overlap_report,
    spearman,
)
from compo.data.encoding import load_tokenized
from compo.data.split import split
from compo.fileio import read_jsonl
from compo.model.loading import load_model, load_tokenizer


def test_formula_on_known_vectors():
    chosen = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    rejected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    scores = ches_from_embeddings(torch.stack([chosen, rejected], dim=1))
    # <c, r> - ||c||^2: identical -> 0; (1,1)/(0,1): 1 - 2; orthogonal (2,0)/(0,3): 0 - 4
    assert scores.tolist() == [0.0, -1.0, -4.0]


def reference_ches(model, tokenizer, pair, normalized: bool) -> float:
    """Independent path: the model's own output_hidden_states, one sequence at a time."""
    sums = []
    for completion in (pair.chosen_ids, pair.rejected_ids):
        ids = torch.tensor([pair.prompt_ids + completion])
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        first = len(pair.prompt_ids) - 1  # positions that predict the completion's tokens
        block = hidden[first : first + len(completion)].double()
        sums.append(block.mean(0) if normalized else block.sum(0))
    return float(sums[0] @ sums[1] - sums[0] @ sums[0])


@pytest.mark.parametrize("normalized", [True, False])
def test_scores_match_the_models_hidden_states(model_dir, pairs_file, normalized):
    tokenizer = load_tokenizer(model_dir)
    model = load_model(ModelConfig(path=str(model_dir)))
    pairs, _ = load_tokenized(DataConfig(path=str(pairs_file)), tokenizer)
    batched = ches_scores(model, pairs, tokenizer.pad_token_id, batch_size=4,
                          length_normalized=normalized)
    expected = [reference_ches(model, tokenizer, pair, normalized) for pair in pairs]
    assert batched.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_noisy_rules():
    scores = torch.tensor([0.5, -2.0, 3.0, 1.0])
    assert ches_noisy_mask(scores, ChesConfig(threshold=0.9), 0).tolist() == [
        False, False, True, True]
    assert ches_noisy_mask(scores, ChesConfig(top_fraction=0.25), 0).tolist() == [
        False, False, True, False]
    assert ches_noisy_mask(scores, ChesConfig(), 3).tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="not both"):
        ChesConfig(threshold=1.0, top_fraction=0.5)


def test_overlap_counts_and_rank_correlation():
    margin = torch.tensor([True, True, False, False, False])
    ches = torch.tensor([True, False, True, False, False])
    report = overlap_report(margin, ches, torch.tensor([0.1, -0.2, 5.0, 6.0, 7.0]),
                            torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]))
    assert (report["both_noisy"], report["margin_only"], report["ches_only"],
            report["neither"]) == (1, 1, 1, 2)
    assert report["jaccard"] == pytest.approx(1 / 3)
    assert report["spearman_abs_margin_vs_ches"] == pytest.approx(-1.0)
    assert spearman(torch.arange(5.0), torch.arange(5.0)) == pytest.approx(1.0)


@pytest.mark.parametrize("decide", [True, False])
def test_split_with_ches(tmp_path, model_dir, pairs_file, decide):
    ches = ChesConfig(top_fraction=0.5)
    config = SplitConfig(model=ModelConfig(path=str(model_dir)),
                         data=DataConfig(path=str(pairs_file)), delta=0.5,
                         output_dir=str(tmp_path / "out"))
    report = split(config, ches_criterion(ches, decide, batch_size=4, bins=5))
    noisy = read_jsonl(tmp_path / "out/noisy.jsonl")
    clean = read_jsonl(tmp_path / "out/clean.jsonl")
    rows = noisy + clean
    assert report["noisy"] == len(noisy) and len(rows) == 4
    assert report["criterion"] == ("ches" if decide else "margin")
    top_two = sorted(row["ches"] for row in rows)[2:]
    if decide:
        assert sorted(row["ches"] for row in noisy) == top_two
    else:
        assert all(abs(row["margin"]) <= 0.5 for row in noisy)
    assert sum(row["ches_noisy"] for row in rows) == report["ches"]["noisy"] == 2
    overlap = report["overlap"]
    assert overlap["both_noisy"] == sum(r["ches_noisy"] and r["margin_noisy"] for r in rows)
    assert overlap["margin_noisy"] == sum(abs(row["margin"]) <= 0.5 for row in rows)
