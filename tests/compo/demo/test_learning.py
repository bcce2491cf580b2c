"""ComPO learns from votes on generated responses (a small scale of bench/learning.py).

The check is a contrast, so it holds by construction rather than by the luck of the
directions: the same start model, seed and directions are trained once with a judge that
prefers shorter responses and once with one that prefers longer ones. The two trained
models must end on opposite sides: the expected length of held-out responses (sampled,
the same random streams for both) is lower after the shorter taste. Flipping the votes
swaps the tastes, so the test then fails (measured: see README, "Does it learn from
generated responses?"). The reward model of bench/learning.py ranks held-out pairs."""

from dataclasses import replace

import pytest

from bench import learning as bench
from compo import fileio
from compo.demo import learning
from compo.demo.embedded import prepare_embedded
from oracle_service.backends import reward_fit

FIT = reward_fit.FitSettings(steps=60)
SMALL = replace(learning.LearningSettings(), iterations=30, perturbations=48,
                heldout_prompts=16, samples=8)
REWARD_SCALE = replace(SMALL, iterations=60)  # at 30 the gap was 0.07-0.15 (seeds 0, 1)
SEED = 0
MIN_GAP = 1.0  # characters between the two tastes' mean held-out lengths
MIN_REWARD_GAP = 0.25  # between the mean held-out rewards after the two signs


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return prepare_embedded(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="module")
def reward_dir(embedded, tmp_path_factory):
    rows = fileio.read_jsonl(embedded.train)
    return bench.fit_reward_model(embedded.model_dir, rows, tmp_path_factory.mktemp("reward"),
                                  FIT)


def trained_lengths(embedded, workdir, seed: int) -> dict[str, float]:
    """Mean length of sampled held-out responses after ComPO with each judge's taste (the
    judge and the service in a process of their own, as in bench/learning.py)."""
    weights = {name: bench.train_one(name, seed, workdir, workdir, embedded, SMALL)[0]
               for name in ("shorter", "longer")}
    _, _, held = learning.start_and_trained(embedded, weights, SMALL)
    return {name: learning.mean_length([t for row in h.sampled for t in row])
            for name, h in held.items()}


def trained_rewards(embedded, workdir, reward_dir, seed: int) -> dict[str, float]:
    """Mean reward (the un-negated model's) of sampled held-out responses after ComPO with
    the reward model and with its negation as the oracle, and of the start model's."""
    weights = {name: bench.train_one(name, seed, workdir, reward_dir, embedded,
                                     REWARD_SCALE)[0]
               for name in bench.REWARDS}
    pairs, start, held = learning.start_and_trained(embedded, weights, REWARD_SCALE)
    score = bench.reward_scorer(reward_dir)
    return {"start": score(pairs, start.sampled),
            **{name: score(pairs, h.sampled) for name, h in held.items()}}


def test_held_out_prompts_are_never_trained_on(embedded):
    """The demo's pairs repeat a few prompts (same chosen, another rejected): a held-out row
    whose prompt is also a training row's would be trained on."""
    from compo.model.loading import load_tokenizer

    train = fileio.read_jsonl(embedded.train)
    prompts = {row["prompt"] for row in train}
    chosen = {(row["prompt"], row["chosen"]) for row in train}
    rows = learning.heldout_rows(embedded)
    assert len(rows) == len(fileio.read_jsonl(embedded.heldout)) - 3  # three were repeats
    assert not any(row["prompt"] in prompts or (row["prompt"], row["chosen"]) in chosen
                   for row in rows)
    pairs = learning.heldout_prompts(embedded, load_tokenizer(embedded.model_dir),
                                     learning.LearningSettings().heldout_prompts)
    assert len(pairs) == learning.LearningSettings().heldout_prompts
    assert not any(pair.row["prompt"] in prompts for pair in pairs)


def test_the_reward_model_prefers_chosen_responses_it_never_saw(embedded, reward_dir):
    assert bench.pair_accuracy(reward_dir, learning.heldout_rows(embedded)) > 0.6


def test_the_negated_reward_model_has_the_opposite_taste(embedded, reward_dir):
    negated = bench.negate_reward_model(reward_dir)
    rows = learning.heldout_rows(embedded)
    assert bench.pair_accuracy(negated, rows) < 1 - 0.6


def test_judges_of_opposite_tastes_move_held_out_lengths_apart(embedded, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv(bench.TOKEN_ENV, bench.TOKEN)
    length = trained_lengths(embedded, tmp_path, SEED)
    assert length["shorter"] + MIN_GAP < length["longer"], length


def test_reward_models_of_opposite_signs_move_held_out_rewards_apart(embedded, reward_dir,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setenv(bench.TOKEN_ENV, bench.TOKEN)
    bench.negate_reward_model(reward_dir)
    reward = trained_rewards(embedded, tmp_path, reward_dir, SEED)
    assert reward["negated"] + MIN_REWARD_GAP < reward["reward"], reward
    # The start model imitates the chosen responses the reward model was fitted to prefer,
    # so it starts at the reward's top (headroom only downwards): the negation moves it.
    assert reward["negated"] < reward["start"], reward
