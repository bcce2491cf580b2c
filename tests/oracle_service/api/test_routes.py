"""HTTP surface: auth, limits, validation errors, health, metrics, OpenAPI, iterations."""

from __future__ import annotations

import httpx
import pytest

from oracle_service.core.settings import InsecureSettingsError
from oracle_service.main import create_app
from oracle_service.schemas import MAX_SUMMARY_BYTES, MAX_SUMMARY_FIELDS


def item(prompt: str, a: str, b: str, **extra: object) -> dict:
    return {"prompt": prompt, "response_a": a, "response_b": b, **extra}


def test_auth_required_everywhere_but_health(make_settings, running_service):
    with running_service(make_settings()) as http:
        for path in ("/v1/limits", "/v1/stats", "/metrics", "/openapi.json"):
            anonymous = http.get(path, headers={"Authorization": ""})
            assert anonymous.status_code == 401, path
            assert anonymous.headers["www-authenticate"] == "Bearer"
            wrong = http.get(path, headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status_code == 401, path
            assert http.get(path).status_code == 200, path
        body = {"items": [item("p", "x", "y")]}
        assert (
            http.post("/v1/comparisons", json=body, headers={"Authorization": ""}).status_code
            == 401
        )
        for path in ("/healthz", "/readyz"):
            assert http.get(path, headers={"Authorization": ""}).status_code == 200


@pytest.mark.parametrize("token", ["", "changeme", "CHANGEME", "placeholder"])
def test_refuses_to_start_with_a_placeholder_token(make_settings, token):
    with pytest.raises(InsecureSettingsError, match="COMPO_ORACLE_API_TOKEN"):
        create_app(make_settings(api_token=token))
    create_app(make_settings(api_token=token, dev_mode=True))  # allowed in dev mode


def test_dev_mode_without_token_has_no_auth(make_settings, running_service):
    with running_service(make_settings(api_token="", dev_mode=True)) as http:
        assert http.get("/v1/limits", headers={"Authorization": ""}).status_code == 200


def test_batch_size_limit_is_422_with_a_clear_message(make_settings, running_service):
    """A batch over max_batch_size breaks the schema's maxItems: a 422 like any other."""
    with running_service(make_settings(max_batch_size=2)) as http:
        assert http.get("/v1/limits").json()["max_batch_size"] == 2
        response = http.post("/v1/comparisons", json={"items": [item("p", "x", "y")] * 3})
        assert response.status_code == 422
        assert "batch of 3 items exceeds max_batch_size=2" in response.json()["detail"]
        assert response.json()["errors"][0]["loc"] == ["body", "items"]


def test_body_size_limit_is_413(make_settings, running_service):
    with running_service(make_settings(max_body_bytes=2_000)) as http:
        big = {"items": [item("p" * 5_000, "x", "y")]}
        response = http.post("/v1/comparisons", json=big)
        assert response.status_code == 413
        assert "max_body_bytes=2000" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit applies while streaming
            yield b'{"items": [{"prompt": "'
            yield b"p" * 5_000
            yield b'", "response_a": "x", "response_b": "y"}]}'

        streamed = http.post(
            "/v1/comparisons", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/comparisons", {"items": [{"prompt": "p", "response_a": "x"}]}, "items.0.response_b"),
        ("/v1/comparisons", {"items": []}, "items"),
        ("/v1/comparisons", {"items": [item("p", "x", "y", iteration=-1)]}, "iteration"),
        ("/v1/comparisons", {"items": [item("p", "x", "y", run_id="a b")]}, "run_id"),
        (
            "/v1/runs/r1/iterations",
            {"iteration": 0, "m": 4, "n_minus": 1, "accepted": True, "note": "text"},
            "extra field 'note' must be a number",
        ),
        (
            "/v1/runs/bad%20id/iterations",
            {"iteration": 0, "m": 4, "n_minus": 1, "accepted": True},
            "run_id",
        ),
    ],
)
def test_validation_errors_are_clear_422s(make_settings, running_service, path, body, expected):
    with running_service(make_settings()) as http:
        response = http.post(path, json=body)
        assert response.status_code == 422
        payload = response.json()
        assert payload["detail"].startswith("invalid request: ")
        assert expected in payload["detail"]
        assert payload["errors"]


def test_identical_responses_tie_without_a_judge_call(
    make_settings, running_service, post_compare, fake_judge
):
    with running_service(make_settings()) as http:
        [result] = post_compare(http, [item("p", "same text", "same text", perturbation=7)])
    assert result == {
        "verdict": "tie",
        "probability": 0.5,
        "cached": False,
        "error": None,
        "perturbation": 7,
        "position_inconsistent": False,
        "cost_usd": None,  # the service has no prices
    }
    assert fake_judge.judge.requests == []


def test_iterations_round_trip_and_survive_restart(make_settings, running_service):
    settings = make_settings()
    summary = {
        "iteration": 3,
        "m": 1600,
        "n_minus": 400,
        "accepted": True,
        "step": 0.00875,
        "kept_fraction": 0.03,
        "logp_chosen_change": 0.2,
        "logp_rejected_change": -0.4,
        "grad_norm": 12.5,
    }
    with running_service(settings) as http:
        assert http.post("/v1/runs/r1/iterations", json=summary).status_code == 201
        skipped = {"iteration": 1, "m": 1600, "n_minus": 100, "accepted": False}
        assert http.post("/v1/runs/r1/iterations", json=skipped).status_code == 201
        replaced = {**skipped, "n_minus": 120}
        assert http.post("/v1/runs/r1/iterations", json=replaced).status_code == 201
    with running_service(settings) as http:
        listed = http.get("/v1/runs/r1/iterations").json()
        assert http.get("/v1/runs/other/iterations").json()["iterations"] == []
    assert listed["run_id"] == "r1"
    assert [it["iteration"] for it in listed["iterations"]] == [1, 3]
    assert listed["iterations"][0]["n_minus"] == 120
    assert listed["iterations"][1]["grad_norm"] == 12.5
    assert listed["iterations"][1]["kept_fraction"] == 0.03


def test_openapi_documents_the_versioned_api(make_settings, running_service):
    with running_service(make_settings()) as http:
        schema = http.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/comparisons",
        "/v1/stats",
        "/v1/runs/{run_id}/stats",
        "/v1/runs/{run_id}/iterations",
        "/v1/limits",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert set(paths["/v1/runs/{run_id}/iterations"]) == {"get", "post"}
    assert "ComparisonResult" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_metrics_count_comparisons(make_settings, running_service, post_compare):
    with running_service(make_settings()) as http:
        post_compare(http, [item("p1", "longer answer", "short"), item("p2", "x", "x")])
        post_compare(http, [item("p1", "longer answer", "short")])
        text = http.get("/metrics").text
    assert 'oracle_comparisons_total{cached="false",verdict="a"} 1.0' in text
    assert 'oracle_comparisons_total{cached="true",verdict="a"} 1.0' in text
    assert 'oracle_comparisons_total{cached="false",verdict="tie"} 1.0' in text
    assert 'oracle_backend_attempts_total{outcome="ok"} 1.0' in text


def test_readyz_reports_ready_only_while_running(make_settings):
    app = create_app(make_settings())
    transport = httpx.ASGITransport(app=app)

    async def probe() -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/readyz")).status_code

    import asyncio

    assert asyncio.run(probe()) == 503  # lifespan not run: nothing opened yet


def readiness(app) -> list[tuple[int, dict]]:
    """/readyz before and after the background key check, with the app's lifespan run."""
    import asyncio

    async def probe() -> list[tuple[int, dict]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                first = await client.get("/readyz")
                await app.state.key_task  # the check /readyz started in the background
                second = await client.get("/readyz")
        return [(r.status_code, r.json()) for r in (first, second)]

    return asyncio.run(probe())


def test_readyz_is_not_ready_when_the_judge_rejects_the_key(make_settings, fake_judge):
    (status, body), (later, problem) = readiness(create_app(make_settings(
        judge_api_key="sk-not-the-judges-key")))
    assert (status, body["key"]) == (200, "pending")  # never waits for the judge
    assert later == 503 and problem["status"] == "judge rejected the key"
    assert "HTTP 401" in problem["detail"] and "sk-not-the-judges-key" not in str(problem)
    assert problem["fix"] == "check COMPO_ORACLE_JUDGE_API_KEY on the service"
    assert fake_judge.judge.requests == []  # a model list, not a (paid) completion


def test_readyz_with_an_accepted_key(make_settings):
    assert readiness(create_app(make_settings()))[1] == (
        200, {"status": "ready", "backend": "judge", "key": "accepted"})


def test_preflight_runs_a_canary_comparison_past_the_cache(make_settings, running_service,
                                                          fake_judge, post_compare):
    with running_service(make_settings()) as http:
        canary = {"prompt": "What is 2 + 2?", "response_a": "4", "response_b": "5"}
        post_compare(http, [canary])
        assert http.get("/v1/preflight").json() == {"backend": "judge", "ok": True}
        fake_judge.judge.api_key = "sk-rotated"
        assert post_compare(http, [canary])[0]["cached"]  # the cache alone hides it
        refused = http.get("/v1/preflight").json()
        assert http.get("/v1/preflight", headers={"Authorization": ""}).status_code == 401
    assert len(fake_judge.judge.requests) == 3  # one comparison, two canaries
    assert (refused["ok"], refused["kind"]) == (False, "auth_error")
    assert refused["fix"] == "check COMPO_ORACLE_JUDGE_API_KEY on the service"


@pytest.mark.parametrize(
    ("path", "raw", "expected"),
    [
        ("/v1/comparisons", '{"items": [{"prompt": "\\ud800", "response_a": "x", '
         '"response_b": "y"}]}', "body: Invalid JSON: unexpected end of hex escape at line 1"),
        ("/v1/comparisons", '{"items": [{"prompt": "p", "response_a": "x", "response_b": "y", '
         f'"iteration": {2**63}}}]}}', "body.items.0.iteration: Input should be less than or"),
        ("/v1/comparisons", '{"items": [{"prompt": "p", "response_a": "x", "response_b": "y", '
         '"perturbation": true}]}', "must be a number, not true or false"),
        ("/v1/runs/r1/iterations", f'{{"iteration": {2**63}, "m": 1, "n_minus": 0, '
         '"accepted": true}', "body.iteration: Input should be less than or equal"),
        ("/v1/runs/r1/iterations", '{"iteration": 0, "m": 1, "n_minus": 0, "accepted": true, '
         '"\\udcff": 1}', "body: Invalid JSON: lone leading surrogate in hex escape"),
        ("/v1/runs/r1/iterations", '{"iteration": 0, "m": 1, "n_minus": 0, "accepted": true, '
         '"step": NaN}', "body.step"),
    ],
)  # fmt: skip
def test_bad_unicode_and_numbers_are_422s_not_500s(make_settings, running_service, path, raw,
                                                   expected):  # fmt: skip
    with running_service(make_settings()) as http:
        headers = {"Content-Type": "application/json"}
        response = http.post(path, content=raw.encode(), headers=headers)
        assert response.status_code == 422, response.text
        assert expected in response.json()["detail"], response.json()["detail"]


def test_a_batch_too_large_is_refused_before_it_is_parsed(make_settings, running_service):
    items = ",".join('{"prompt": "p", "response_a": "x", "response_b": "y"}' for _ in range(5))
    broken = '{"items": [' + items + ', {"prompt": "p", "response_a": 1}'  # invalid JSON too
    with running_service(make_settings(max_batch_size=4)) as http:
        response = http.post("/v1/comparisons", content=broken.encode())
    assert response.status_code == 422  # counted from the bytes: no parse was needed
    assert "batch of 6 items exceeds max_batch_size=4" in response.json()["detail"]


def test_a_wrong_method_lists_every_allowed_one(make_settings, running_service):
    with running_service(make_settings()) as http:
        response = http.request("DELETE", "/v1/runs/r1/iterations")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("run_id", ["%2E", "%2E%2E", ".hidden", "-rf", "_x"])
def test_run_ids_that_a_path_could_read_as_more_than_a_name_are_refused(
        make_settings, running_service, run_id):  # fmt: skip
    summary = {"iteration": 0, "m": 4, "n_minus": 1, "accepted": True}
    with running_service(make_settings()) as http:
        posted = http.post(f"/v1/runs/{run_id}/iterations", json=summary)
        assert posted.status_code == 422, posted.text  # '..' was stored: 201
        assert "run_id" in posted.json()["detail"]
        for path in (f"/v1/runs/{run_id}/iterations", f"/v1/runs/{run_id}/stats"):
            assert http.get(path).status_code == 422, path
        bad_item = item("p", "x", "y", run_id=run_id.replace("%2E", "."))
        assert http.post("/v1/comparisons", json={"items": [bad_item]}).status_code == 422
        assert http.get("/v1/runs").json() == {"runs": []}


def test_a_self_contradicting_summary_is_a_409(make_settings, running_service):
    with running_service(make_settings()) as http:
        body = {"iteration": 0, "m": 4, "n_minus": 5, "accepted": True}
        response = http.post("/v1/runs/r1/iterations", json=body)
        assert response.status_code == 409
        assert response.json()["detail"] == "n_minus (5) cannot exceed m (4)"
        assert http.get("/v1/runs/r1/iterations").json()["iterations"] == []


def test_iteration_summaries_are_bounded_in_bytes_and_fields(make_settings, running_service):
    base = {"iteration": 0, "m": 4, "n_minus": 1, "accepted": True}
    with running_service(make_settings()) as http:
        huge = {**base, **{f"x{i}": i for i in range(300_000)}}  # 5.5 MB, was stored
        response = http.post("/v1/runs/r1/iterations", json=huge)
        assert response.status_code == 413, response.text[:300]
        assert f"exceeds MAX_SUMMARY_BYTES={MAX_SUMMARY_BYTES}" in response.json()["detail"]
        many = {**base, **{f"x{i}": 1 for i in range(MAX_SUMMARY_FIELDS)}}  # small, too many
        response = http.post("/v1/runs/r1/iterations", json=many)
        assert response.status_code == 422, response.text[:300]
        assert f"at most MAX_SUMMARY_FIELDS={MAX_SUMMARY_FIELDS} fields" in response.json()[
            "detail"]
        most = {**base, **{f"x{i}": 1 for i in range(MAX_SUMMARY_FIELDS - len(base))}}
        assert http.post("/v1/runs/r1/iterations", json=most).status_code == 201
        [stored] = http.get("/v1/runs/r1/iterations").json()["iterations"]
    assert sum(name.startswith("x") for name in stored) == MAX_SUMMARY_FIELDS - len(base)
