"""The oracle service's fixtures (a fake judge on loopback, the real service before it)."""

from tests.oracle_service.conftest import (  # noqa: F401 (the service oracle's fixtures)
    _clean_env,
    api_token,
    fake_judge,
    make_settings,
    running_service,
)
