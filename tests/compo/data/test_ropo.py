"""ROPO's loss against a hand computation, and ROPO as a split criterion."""

import math

import pytest
import torch

from compo.config import DataConfig, ModelConfig, SplitConfig
from compo.data.ropo import RopoConfig, agreement, ropo_criterion, ropo_losses
from compo.data.split import split
from compo.fileio import read_jsonl
from tests.conftest import PAIRS, write_jsonl


def test_loss_matches_the_formula_by_hand():
    margins, beta, alpha = [-2.0, 0.0, 3.0], 0.5, 2.0
    dpo_weight, bounded_weight = 4 * alpha / (1 + alpha) ** 2, 4 * alpha**2 / (1 + alpha) ** 2
    expected = [dpo_weight * math.log(1 + math.exp(-beta * m))
                + bounded_weight / (1 + math.exp(beta * m)) for m in margins]
    got = ropo_losses(torch.tensor(margins, dtype=torch.float64), beta, alpha)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert ropo_losses(torch.zeros(1), 0.1, 1.0).item() == pytest.approx(math.log(2) + 0.5)


def test_gradient_stays_bounded_where_the_model_disagrees_most():
    margins = torch.tensor([-200.0, -2.0, 0.0, 2.0], requires_grad=True)
    ropo_losses(margins, 1.0, 4.0).sum().backward()
    dpo = torch.tensor([-200.0, -2.0, 0.0, 2.0], requires_grad=True)
    (-torch.nn.functional.logsigmoid(dpo)).sum().backward()
    weight, dpo_weight = -margins.grad, -dpo.grad
    assert weight[0] == pytest.approx(4 * 4 / 25)  # c_dpo, where DPO's weight is 1
    assert dpo_weight[0] == pytest.approx(1.0) and weight[1] > weight[0]  # suppressed


def test_agreement_counts_every_combination():
    masks = {"margin": torch.tensor([1, 1, 0, 0]).bool(), "ropo": torch.tensor([1, 0, 1, 0]).bool()}
    report = agreement(masks)
    assert report["groups"] == {"margin": 1, "margin+ropo": 1, "none (clean)": 1, "ropo": 1}
    assert report["jaccard"] == {"margin/ropo": pytest.approx(1 / 3)}


def test_split_by_ropo_marks_a_pair_labelled_against_the_model_as_noisy(tmp_path, model_dir,
                                                                        pairs_file):
    model = ModelConfig(path=str(model_dir))
    report = split(SplitConfig(model=model, data=DataConfig(path=str(pairs_file)),
                               output_dir=str(tmp_path / "probe")))
    rows = read_jsonl(tmp_path / "probe" / "noisy.jsonl") + read_jsonl(
        tmp_path / "probe" / "clean.jsonl")
    strongest = max(rows, key=lambda row: abs(row["margin"]))  # the model's clearest preference
    flipped = dict(prompt=strongest["prompt"], chosen=strongest["rejected"],
                   rejected=strongest["chosen"])
    if strongest["margin"] < 0:  # orient it against the model: chosen is the unlikely one
        flipped["chosen"], flipped["rejected"] = flipped["rejected"], flipped["chosen"]
    others = [pair for pair in PAIRS if pair["prompt"] != strongest["prompt"]]
    data = write_jsonl(tmp_path / "with_noise.jsonl", others + [flipped])
    criterion = ropo_criterion(RopoConfig(top_fraction=0.25), None, decide=True)
    report = split(SplitConfig(model=model, data=DataConfig(path=str(data)), delta=0.5,
                               output_dir=str(tmp_path / "out")), criterion)
    noisy = read_jsonl(tmp_path / "out" / "noisy.jsonl")
    assert [row["chosen"] for row in noisy] == [flipped["chosen"]]
    assert noisy[0]["ropo_noisy"] and noisy[0]["ropo_loss"] == max(
        row["ropo_loss"] for row in noisy + read_jsonl(tmp_path / "out" / "clean.jsonl"))
    assert report["criterion"] == "ropo" and report["noisy"] == 1
    assert sum(report["three_way"]["groups"].values()) == 4
    assert set(report["three_way"]["noisy"]) == {"margin", "ropo"}
