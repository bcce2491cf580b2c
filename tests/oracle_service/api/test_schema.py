"""The served OpenAPI schema matches the answers: plain schemathesis (every check, bounded
examples) and a hypothesis fuzzer against the live app; no input is a 5xx."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle_service.main import create_app
from oracle_service.testing.fake_judge import BackgroundServer
from tests.oracle_service.conftest import TOKEN

EXAMPLES_PER_OPERATION = 25  # bounded: the whole run takes ~35 s on 2 cores
SEED = 20250601


@pytest.fixture
def live_url(make_settings):
    with BackgroundServer(create_app(make_settings(max_batch_size=16))) as server:
        yield server.url


def test_schemathesis_finds_no_failures(live_url, tmp_path):
    """Plain `schemathesis run --checks all` with the token: no hooks, no expected-status
    lists; only the example count and the seed are set."""
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{live_url}/openapi.json",
         "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}", "--no-color",
         "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = done.stdout[-3000:]
    assert done.returncode == 0, summary
    assert "No issues found" in summary or " passed" in summary, summary


def lone_surrogates() -> st.SearchStrategy[str]:
    """Text with lone surrogates mixed in: JSON can carry them as \\ud800 escapes."""
    surrogate = st.integers(0xD800, 0xDFFF).map(chr)
    return st.lists(st.one_of(st.characters(), surrogate), max_size=12).map("".join)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | lone_surrogates(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(lone_surrogates(), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
TEXT_OR_JUNK = lone_surrogates() | JSON_VALUES
ITEM = st.fixed_dictionaries(
    {"prompt": TEXT_OR_JUNK, "response_a": TEXT_OR_JUNK, "response_b": TEXT_OR_JUNK},
    optional={"run_id": TEXT_OR_JUNK, "iteration": JSON_VALUES, "perturbation": JSON_VALUES,
              "extra": JSON_VALUES},
)  # fmt: skip
SUMMARY = st.fixed_dictionaries(
    {"iteration": JSON_VALUES, "m": JSON_VALUES, "n_minus": JSON_VALUES, "accepted": JSON_VALUES},
    optional={"step": JSON_VALUES, "kept_fraction": JSON_VALUES},
).flatmap(lambda body: st.dictionaries(lone_surrogates(), JSON_VALUES, max_size=3)
          .map(lambda extra: {**extra, **body}))  # fmt: skip


def encode(body: object) -> bytes:
    """JSON as a client would send it: ASCII escapes (lone surrogates too), NaN allowed."""
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.fixture
def live(make_settings):
    with BackgroundServer(create_app(make_settings(max_batch_size=8))) as server:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            yield http


def test_fuzzed_comparisons_never_get_a_5xx(live):
    @settings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.one_of(st.fixed_dictionaries({"items": st.lists(ITEM, max_size=3)}), JSON_VALUES))
    def check(body):
        response = live.post("/v1/comparisons", content=encode(body))
        assert response.status_code < 500, (body, response.text[:300])
        if response.status_code == 200:
            assert len(response.json()["results"]) == len(body["items"])
        else:
            assert isinstance(response.json()["detail"], str)

    check()


def test_fuzzed_iteration_summaries_never_get_a_5xx(live):
    @settings(
        max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(SUMMARY, st.sampled_from(["r1", "run.2", "x" * 128]))
    def check(body, run_id):
        response = live.post(f"/v1/runs/{run_id}/iterations", content=encode(body))
        assert response.status_code < 500, (body, response.text[:300])
        listed = live.get(f"/v1/runs/{run_id}/iterations")
        assert listed.status_code == 200, listed.text[:300]

    check()
