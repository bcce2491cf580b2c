"""The oracle service's fixtures (a fake judge on loopback, the real service before it),
and the tiny model loaded once per module."""

import pytest

from compo.config import ModelConfig
from compo.model.loading import load_model, load_tokenizer
from tests.oracle_service.conftest import (  # noqa: F401 (the service oracle's fixtures)
    _clean_env,
    api_token,
    fake_judge,
    make_settings,
    post_compare,
    running_service,
)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(ModelConfig(path=str(model_dir))), load_tokenizer(model_dir)
