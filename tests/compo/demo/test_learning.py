"""The reward model of bench/learning.py, fitted on the demo pairs, ranks held-out pairs.

Whether ComPO on generated responses moves held-out responses the oracle's way is not
checked here: at a CI-sized scale the direction is not reproducible (with the current
direction generator a judge preferring shorter answers made held-out responses 6
characters longer over 24 prompts, one preferring longer answers 26 shorter; see README,
"Does it learn from generated responses?")."""

import pytest

from compo import fileio
from compo.demo import learning
from compo.demo.embedded import prepare_embedded

FIT = learning.RewardFit(steps=60)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return prepare_embedded(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="module")
def reward_dir(embedded, tmp_path_factory):
    rows = fileio.read_jsonl(embedded.train)
    return learning.fit_reward_model(embedded.model_dir, rows,
                                     tmp_path_factory.mktemp("reward"), seed=0, fit=FIT)


def test_the_reward_model_prefers_chosen_responses_it_never_saw(embedded, reward_dir):
    assert learning.pair_accuracy(reward_dir, fileio.read_jsonl(embedded.heldout)) > 0.6
