"""`compo eval`: accuracy, displacement, greedy lengths, the judge win rate, the report."""

import json

import pytest
import torch
import yaml

from compo.config import DataConfig, ModelConfig
from compo.data.encoding import load_tokenized
from compo.errors import ConfigError
from compo.eval.config import EvalConfig, GenerationConfig, JudgeConfig
from compo.eval.evaluate import displacement, evaluate, greedy_responses, preference_accuracy
from compo.eval.winrate import length_controlled, summarize
from compo.model.loading import load_model, load_tokenizer
from compo.model.scoring import score_pairs


def test_accuracy_and_displacement_counts():
    before = (torch.tensor([-5.0, -5.0, -5.0, -5.0]), torch.tensor([-6.0, -6.0, -6.0, -6.0]))
    after = (torch.tensor([-4.0, -6.0, -6.0, -4.0]), torch.tensor([-7.0, -5.0, -7.0, -5.0]))
    assert preference_accuracy(*after) == 0.75  # pairs 0, 2 and 3 have y+ above y-
    shift = displacement(before, after)
    assert shift["counts"] == {
        "log pi(y+) fell": 2, "log pi(y-) rose": 2, "both: y+ fell and y- rose": 1,
        "y+ and y- both fell": 1, "y+ rose and y- fell (the goal)": 1}
    assert shift["mean_chosen_change"] == 0.0 and shift["mean_rejected_change"] == 0.0


def test_length_control_removes_a_pure_length_effect():
    diffs = [10.0, -10.0] * 20
    longer_wins = [1.0 if d > 0 else 0.0 for d in diffs]
    assert summarize(["a" if s else "b" for s in longer_wins], ["x"] * 40, ["y"] * 40)[
        "win_rate"] == 0.5
    assert length_controlled(longer_wins, diffs) == pytest.approx(0.5, abs=1e-6)
    # the model wins 3 of 4 and is always the longer one: raw 75%, at equal length lower
    scores, lengths = [1.0, 1.0, 1.0, 0.0] * 10, [5.0, 8.0, 12.0, 2.0] * 10
    assert length_controlled(scores, lengths) < 0.75
    # no length difference at all: the estimate is the plain win rate
    assert length_controlled(scores, [0.0] * 40) == pytest.approx(0.75, abs=1e-3)


def test_summary_counts_ties_half_and_leaves_abstentions_out():
    result = summarize(["a", "b", "tie", "abstain"], ["aa", "b", "cc", "d"], ["a", "bb", "c", "d"])
    assert (result["wins"], result["losses"], result["ties"], result["abstained"]) == (1, 1, 1, 1)
    assert result["win_rate"] == pytest.approx(0.5)


def test_batched_greedy_generation_equals_one_at_a_time(model_dir, pairs_file):
    tokenizer = load_tokenizer(model_dir)
    model = load_model(ModelConfig(path=str(model_dir)))
    prompts = [pair.prompt_ids for pair in
               load_tokenized(DataConfig(path=str(pairs_file)), tokenizer)[0]]
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding matters
    gen = GenerationConfig(max_new_tokens=6, batch_size=4)
    batched = greedy_responses(model, tokenizer, prompts, gen)
    single = [greedy_responses(model, tokenizer, [p], gen)[0] for p in prompts]
    assert batched == single and all(len(row) <= 6 for row in batched)


@pytest.fixture
def other_model_dir(tmp_path_factory, tokenizer):
    from compo.demo.tiny import build_llama, save_model

    path = tmp_path_factory.mktemp("other_model")
    return save_model(build_llama(len(tokenizer), hidden=32, layers=2, seed=2), tokenizer, path)


def synthetic_run(folder):
    """A ComPO run directory with two metric rows."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"compo": {"accept_ratio": 0.2}}))
    rows = [{"iteration": i, "ratio": 0.1 + 0.2 * i, "accepted": i == 1, "step": 0.1 * i,
             "kept_fraction": 0.02, "logp_chosen_before": [-3.0], "logp_chosen_after": [-2.5],
             "logp_rejected_before": [-4.0], "logp_rejected_after": [-4.5]} for i in range(2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_evaluate_writes_the_report(tmp_path, model_dir, other_model_dir, pairs_file):
    config = EvalConfig(model=ModelConfig(path=str(model_dir)),
                        base_model=ModelConfig(path=str(other_model_dir)),
                        data=DataConfig(path=str(pairs_file)),
                        run_dir=str(synthetic_run(tmp_path / "run")),
                        output_dir=str(tmp_path / "eval"),
                        generation=GenerationConfig(max_new_tokens=5))
    report = evaluate(config)
    tokenizer = load_tokenizer(model_dir)
    pairs, _ = load_tokenized(config.data, tokenizer)
    chosen, rejected = score_pairs(load_model(config.model), pairs, tokenizer.pad_token_id)
    assert report["preference_accuracy"] == float((chosen > rejected).double().mean())
    counts = report["displacement"]["counts"]
    assert counts["both: y+ fell and y- rose"] <= min(counts["log pi(y+) fell"],
                                                     counts["log pi(y-) rose"])
    assert report["generation"]["prompts"] == 4
    assert 0 <= report["generation"]["mean_tokens"] <= 5
    saved = json.loads((tmp_path / "eval/report.json").read_text())
    assert saved["preference_accuracy"] == report["preference_accuracy"]
    text = (tmp_path / "eval/report.md").read_text()
    assert "| log pi(y+) fell |" in text
    assert "![votes](../run/plots/votes.png)" in text
    assert (tmp_path / "run/plots/votes.png").is_file()


def test_missing_paths_are_named_before_loading(tmp_path, model_dir, pairs_file):
    config = EvalConfig(model=ModelConfig(path=str(model_dir)),
                        data=DataConfig(path=str(pairs_file)),
                        base_model=ModelConfig(path=str(tmp_path / "nope")),
                        output_dir=str(tmp_path / "eval"))
    with pytest.raises(ConfigError, match="base_model.path=.*nope: no model there"):
        evaluate(config)
    assert not (tmp_path / "eval").exists()


def test_judge_win_rate_through_the_oracle_service(tmp_path, monkeypatch, model_dir,
                                                   other_model_dir, pairs_file):
    pytest.importorskip("fastapi")
    from oracle_service.core.settings import Settings
    from oracle_service.main import create_app
    from oracle_service.testing.fake_judge import BackgroundServer, FakeJudge, prefer_longer

    token = "test-token-5d41402abc4b"
    monkeypatch.setenv("EVAL_TEST_TOKEN", token)
    with BackgroundServer(FakeJudge(prefer_longer, api_key="sk-fake")) as judge:
        settings = Settings(api_token=token, judge_base_url=f"{judge.url}/v1",
                            judge_api_key="sk-fake", judge_model="fake",
                            db_path=tmp_path / "oracle.sqlite3")
        with BackgroundServer(create_app(settings)) as service:
            config = EvalConfig(
                model=ModelConfig(path=str(model_dir)), data=DataConfig(path=str(pairs_file)),
                output_dir=str(tmp_path / "eval"), generation=GenerationConfig(max_new_tokens=8),
                judge=JudgeConfig(url=service.url, token_env="EVAL_TEST_TOKEN",
                                  reference_model=ModelConfig(path=str(other_model_dir))))
            judged = evaluate(config)["judge"]
    from compo.eval.evaluate import generations

    mine = generations(config.model, config.data, config.generation)["texts"]
    theirs = generations(config.judge.reference_model, config.data, config.generation)["texts"]
    longer = sum(len(a) > len(b) for a, b in zip(mine, theirs, strict=True))
    same = sum(len(a) == len(b) for a, b in zip(mine, theirs, strict=True))
    assert judged["comparisons"] == 4 and judged["abstained"] == 0
    assert (judged["wins"], judged["ties"]) == (longer, same)
    assert judged["win_rate"] == pytest.approx((longer + 0.5 * same) / 4)
