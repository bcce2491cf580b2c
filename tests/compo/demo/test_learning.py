"""ComPO learns from votes on generated responses (a small scale of bench/learning.py): with
the oracle service's reward-model backend serving a reward model fitted on the demo pairs,
the mean reward of greedy responses on held-out prompts rises; with the fake judge that
prefers shorter responses, they get shorter."""

import pytest

from compo import fileio
from compo.demo import learning
from compo.demo.embedded import prepare_embedded
from oracle_service.backends.reward_model import RewardModelBackend
from oracle_service.schemas import ComparisonItem
from tests.oracle_service.scripted import TOKEN_ENV

SMALL = learning.LearningSettings(iterations=12, perturbations=32,
                                  heldout_prompts=24)
FIT = learning.RewardFit(steps=60)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return prepare_embedded(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="module")
def reward_dir(embedded, tmp_path_factory):
    rows = fileio.read_jsonl(embedded.train)
    return learning.fit_reward_model(embedded.model_dir, rows,
                                     tmp_path_factory.mktemp("reward"), seed=0, fit=FIT)


@pytest.fixture
def token_env(monkeypatch, api_token):
    monkeypatch.setenv(TOKEN_ENV, api_token)


def prefer_shorter(prompt: str, first: str, second: str) -> str:
    if len(first) == len(second):
        return "TIE"
    return "A" if len(first) < len(second) else "B"


def test_the_reward_model_prefers_chosen_responses_it_never_saw(embedded, reward_dir):
    assert learning.pair_accuracy(reward_dir, fileio.read_jsonl(embedded.heldout)) > 0.6


def test_compo_with_the_reward_model_raises_the_heldout_reward(
        embedded, reward_dir, tmp_path, make_settings, running_service, token_env):
    settings = make_settings(backend="reward_model", reward_model_path=reward_dir,
                             reward_device="cpu")
    with running_service(settings) as http:
        config = learning.compo_config(embedded, str(http.base_url), TOKEN_ENV, tmp_path, 0,
                                       SMALL)
        weight = learning.train_compo(config)
    pairs, start, after = learning.start_and_trained(embedded, weight, SMALL)
    items = [ComparisonItem(prompt=pair.row["prompt"], response_a=a, response_b=b)
             for pair, a, b in zip(pairs, start, after, strict=True)]
    scored = RewardModelBackend(settings).score_pairs(items)  # the service's own scoring
    gains = [b - a for a, b in scored]
    assert sum(a != b for a, b in zip(start, after, strict=True)) > 0  # the model moved
    assert sum(gains) / len(gains) > 0


def test_compo_with_a_judge_preferring_shorter_answers_shortens_them(
        embedded, tmp_path, make_settings, running_service, fake_judge, token_env):
    fake_judge.judge.decide = prefer_shorter
    with running_service(make_settings()) as http:
        config = learning.compo_config(embedded, str(http.base_url), TOKEN_ENV, tmp_path, 0,
                                       SMALL)
        weight = learning.train_compo(config)
    _, start, after = learning.start_and_trained(embedded, weight, SMALL)
    assert sum(a != b for a, b in zip(start, after, strict=True)) > 0
    assert sum(map(len, after)) < sum(map(len, start))
