"""ComPO learns from votes on generated responses (a small scale of bench/learning.py): the
reward model fitted on the demo pairs ranks held-out pairs; with the fake judge that
prefers shorter responses, greedy responses on held-out prompts get shorter (and longer
when the votes are flipped, so the test fails if the direction is lost).

ComPO with the reward model is not checked here: at this scale its held-out reward rises
with flipped votes too (the effect is within the noise; see README)."""

import pytest

from compo import fileio
from compo.demo import learning
from compo.demo.embedded import prepare_embedded
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
