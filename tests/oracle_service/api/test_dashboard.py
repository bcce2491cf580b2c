"""/dashboard: login and session cookie, the run list, and the live page in headless
Chromium following a real ComPO run (and after a service restart, and Ray-shaped rows)."""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from compo.service_oracle.reporting import IterationReporter
from compo.train import ComPOTrainer, start_run
from oracle_service.core.session import COOKIE_NAME, new_session
from oracle_service.main import create_app
from oracle_service.testing.fake_judge import BackgroundServer
from tests.oracle_service.api.browser import (
    browser_or_skip,
    card,
    chromium,
    log_in,
    points,
    shown_iterations,
    wait_for,
)
from tests.oracle_service.api.dashboard_checks import (
    check_drawn_to_scale,
    check_page_matches_api,
    check_page_matches_plots,
)
from tests.oracle_service.scripted import TOKEN_ENV, scripted_judge, train_config

ITERATIONS = 5
REFRESH_S = 0.2  # the page polls this often in these tests
SCREENSHOT_ENV = "COMPO_DASHBOARD_SCREENSHOT"  # where to copy the screenshot (docs/)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def anonymous(http: httpx.Client) -> httpx.Client:
    """A client of the same service without the bearer token."""
    return httpx.Client(base_url=http.base_url, timeout=30.0)


def log_in_client(client: httpx.Client, token: str) -> None:
    response = client.post("/dashboard/login", data={"token": token})
    assert response.status_code == 303, response.text


def test_login_sets_an_httponly_strict_cookie_derived_from_the_token(
        make_settings, running_service, api_token, caplog):
    with running_service(make_settings()) as http, anonymous(http) as browser:
        first = browser.get("/dashboard")
        assert (first.status_code, first.headers["location"]) == (303, "dashboard/login")
        form = browser.get("/dashboard/login")
        assert 'method="post"' in form.text and "script-src 'self'" in form.headers[
            "content-security-policy"]
        wrong = browser.post("/dashboard/login", data={"token": "not-the-token"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "not the service" in wrong.text
        right = browser.post("/dashboard/login", data={"token": api_token})
        assert (right.status_code, right.headers["location"]) == (303, "../dashboard")
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=") and api_token not in cookie
        assert {"HttpOnly", "SameSite=strict", "Path=/"} <= {
            part.strip() for part in cookie.split(";")}
        assert "Secure" not in cookie  # plain http here; behind an https proxy it is Secure:
        proxied = anonymous(http).post("/dashboard/login", data={"token": api_token},
                                       headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in {part.strip() for part in proxied.headers["set-cookie"].split(";")}
        page = browser.get("/dashboard")
        assert page.status_code == 200 and 'data-chart="ratio"' in page.text
        assert browser.get("/v1/runs").status_code == 200  # the API reads the cookie too
        out = browser.post("/dashboard/logout")
        assert out.status_code == 303 and browser.get("/v1/runs").status_code == 401
    assert api_token not in caplog.text


def test_a_session_reads_but_never_writes(make_settings, running_service, api_token):
    item = {"prompt": "p", "response_a": "x", "response_b": "y"}
    summary = {"iteration": 0, "m": 4, "n_minus": 1, "accepted": False}
    with running_service(make_settings()) as http, anonymous(http) as client:
        log_in_client(client, api_token)
        for path in ("/v1/runs", "/v1/stats", "/v1/runs/r/iterations", "/metrics"):
            assert client.get(path).status_code == 200, path
        assert client.post("/v1/comparisons", json={"items": [item]}).status_code == 401
        assert client.post("/v1/runs/r/iterations", json=summary).status_code == 401


def test_no_token_in_a_url_and_no_stale_or_forged_session(make_settings, running_service,
                                                          api_token):
    settings = make_settings(dashboard_session_hours=1.0)
    with running_service(settings) as http, anonymous(http) as browser:
        for path in (f"/dashboard?token={api_token}", f"/dashboard/login?token={api_token}"):
            response = browser.get(path)
            assert "set-cookie" not in response.headers and response.status_code in (200, 303)
        assert browser.get("/dashboard").status_code == 303
        as_json = browser.post("/dashboard/login", json={"token": api_token})
        assert as_json.status_code == 415  # a form body only
        valid = new_session(api_token, time.time())
        tampered = valid[:-1] + ("1" if valid[-1] == "0" else "0")
        for value in (new_session(api_token, time.time() - 2 * 3600),  # expired
                      new_session("another-token-of-another-service", time.time()), tampered):
            browser.cookies.set(COOKIE_NAME, value)
            assert browser.get("/v1/runs").status_code == 401, value
            assert browser.get("/dashboard").status_code == 303
        browser.cookies.set(COOKIE_NAME, valid)
        assert browser.get("/v1/runs").status_code == 200


def test_run_list_and_static_files(make_settings, running_service):
    summary = {"m": 4, "n_minus": 1, "accepted": False}
    with running_service(make_settings()) as http:
        assert http.get("/v1/runs").json() == {"runs": []}
        for run_id, iterations in (("older", 2), ("newer", 3)):
            for iteration in range(iterations):
                body = {**summary, "iteration": iteration}
                assert http.post(f"/v1/runs/{run_id}/iterations", json=body).status_code == 201
        runs = http.get("/v1/runs").json()["runs"]
        assert [(r["run_id"], r["iterations"], r["last_iteration"]) for r in runs] == [
            ("newer", 3, 2), ("older", 2, 1)]
        script = http.get("/dashboard/static/charts.js", headers={"Authorization": ""})
        assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
        for name in ("index.html", "..%2Fapi%2Fdeps.py", "missing.js"):
            assert http.get(f"/dashboard/static/{name}").status_code == 404, name


def test_dev_mode_without_a_token_opens_the_page(make_settings, running_service):
    with running_service(make_settings(api_token="", dev_mode=True)) as http:
        with anonymous(http) as browser:
            assert browser.get("/dashboard").status_code == 200
            assert browser.get("/dashboard/login").status_code == 303


# -- in Chromium ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    browser_or_skip()
    with chromium() as driver:
        yield driver


def tie_judge(prompt: str, first: str, second: str) -> str:
    """A judge that finds every pair equally good."""
    return "TIE"


class GatedRun:
    """A ComPO run in a thread that waits after each iteration until the test releases it."""

    def __init__(self, trainer: ComPOTrainer):
        self.trainer, self.reached = trainer, queue.Queue()
        self.released = [threading.Event() for _ in range(ITERATIONS)]
        trainer.on_iteration = self.pause
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def pause(self, row: dict) -> None:
        self.reached.put(row["iteration"])  # posted to the service before this call
        assert self.released[row["iteration"]].wait(timeout=120)

    def run(self) -> None:
        try:
            self.trainer.run(progress=False)
        except BaseException as error:  # reported by the test thread
            self.errors.append(error)
            self.reached.put(None)

    def next_iteration(self) -> int:
        iteration = self.reached.get(timeout=120)
        assert not self.errors, self.errors
        return iteration


def screenshot(driver, path: Path) -> None:
    """A PNG of the whole page; also copied to $COMPO_DASHBOARD_SCREENSHOT when set."""
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == PNG_MAGIC
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(path, os.environ[SCREENSHOT_ENV])


def test_the_page_follows_a_judge_run_live_and_after_a_restart(
        model_dir, pairs_file, tmp_path, make_settings, fake_judge, browser, api_token,
        monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, api_token)
    fake_judge.judge.decide = scripted_judge  # crashes and nonsense: abstentions by kind
    settings = make_settings(dashboard_refresh_s=REFRESH_S, judge_input_usd_per_mtok=0.15,
                             judge_output_usd_per_mtok=0.6)
    server = BackgroundServer(create_app(settings)).start()
    try:
        http = httpx.Client(base_url=server.url, timeout=30.0,
                            headers={"Authorization": f"Bearer {api_token}"})
        log_in(browser, server.url, api_token)
        cookie = browser.get_cookie(COOKIE_NAME)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert api_token not in cookie["value"] and api_token not in browser.current_url
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly: not for JS
        wait_for(lambda: "no runs yet" in browser.find_element("id", "status").text, "no runs")
        browser.execute_script("window.sameDocument = true")  # gone if the page reloads
        config = train_config(model_dir, pairs_file, tmp_path, "live", server.url, epochs=2)
        config = config.model_copy(update={"max_iterations": ITERATIONS})
        run = GatedRun(ComPOTrainer(config, start_run(config)))
        run.thread.start()
        for iteration in range(ITERATIONS):
            assert run.next_iteration() == iteration
            wait_for(lambda: shown_iterations(browser) == iteration + 1,  # noqa: B023
                     f"iteration {iteration} on the page")
            assert browser.execute_script("return window.sameDocument") is True
            check_page_matches_api(browser, http, "live")
            check_status(browser, http, "live", "running", iteration + 1)
            if iteration == ITERATIONS - 2:
                screenshot(browser, tmp_path / "dashboard.png")  # during the run
            # iteration 1 meets a judge that sees no difference: every vote a tie, skipped
            fake_judge.judge.decide = tie_judge if iteration == 0 else scripted_judge
            run.released[iteration].set()
        run.thread.join(timeout=120)
        assert not run.errors and not run.thread.is_alive()
        rows = run.trainer.run_dir.metrics()
        wait_for(lambda: card(browser, "state") == "finished", "the finished state")
        check_status(browser, http, "live", "finished", ITERATIONS)
        check_internal_runs_toggle(browser, "live", "live.check")
        check_page_matches_plots(browser, rows, config.compo.accept_ratio)
        check_drawn_to_scale(browser, "ratio", "ratio")
        assert [row["accepted"] for row in rows][1] is False  # the tie judge's iteration
        assert {s for s in ("accepted", "skipped") if points(browser, "ratio", s)} == {
            "accepted", "skipped"}  # the run shows both kinds of iteration
        assert sum(y for _, y in points(browser, "verdicts", "abstain")) > 0
    finally:
        for event in run.released if "run" in locals() else ():
            event.set()  # a failed check must not leave the run waiting
        server.stop()
    with BackgroundServer(create_app(settings)) as again:  # same store, new process state
        browser.get(f"{again.url}/dashboard#run=live")  # the cookie outlives the restart
        wait_for(lambda: shown_iterations(browser) == ITERATIONS, "the run after a restart")
        with httpx.Client(base_url=again.url, timeout=30.0,
                          headers={"Authorization": f"Bearer {api_token}"}) as http:
            check_page_matches_api(browser, http, "live")
            check_status(browser, http, "live", "finished", ITERATIONS)
        check_page_matches_plots(browser, rows, config.compo.accept_ratio)


def check_status(driver, http: httpx.Client, run_id: str, state: str, done: int) -> None:
    """Status, progress (iterations of the total) and ETA: the remaining iterations times
    the mean seconds of the latest (up to 10) iterations, while the run runs."""
    assert card(driver, "state") == state
    assert card(driver, "progress") == f"{done} of {ITERATIONS}"
    summaries = http.get(f"/v1/runs/{run_id}/iterations").json()["iterations"][-10:]
    seconds = [summary["seconds"] for summary in summaries]
    if state == "running":
        expected = (ITERATIONS - done) * (sum(seconds) / len(seconds))
        assert float(card(driver, "eta")) == pytest.approx(expected, rel=1e-12)
    else:
        assert card(driver, "eta") == ""


def run_links(driver) -> list[str]:
    """The run list's links, read at once (the list is redrawn while the page polls)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#runs a')].map((a) => a.textContent);")


def check_internal_runs_toggle(driver, run_id: str, internal: str) -> None:
    """A run's internal runs are hidden until the box is ticked."""
    assert run_id in run_links(driver) and internal not in run_links(driver)
    driver.find_element("id", "show-internal").click()
    wait_for(lambda: internal in run_links(driver), "the internal run listed")
    driver.find_element("id", "show-internal").click()
    wait_for(lambda: internal not in run_links(driver), "the internal run hidden again")


def ray_row(iteration: int) -> dict:
    """A coordinator metrics row with its "ray" entry made by the Ray side's own code."""
    stats_module = pytest.importorskip("workers.stats")  # the ray extra
    stats = stats_module.IterationStats()
    stats.work = {"worker-0": [96 + 8 * iteration, 1.5], "worker-1": [64, 2.0 + iteration]}
    stats.redispatched, stats.failures = iteration % 2, iteration // 2
    ray = {"workers": 2, "dead": 0, "unavailable": 0, "version": iteration, **stats.report()}
    return {"iteration": iteration, "m": 160, "n_minus": 40 + iteration, "abstained": 0,
            "ratio": (40 + iteration) / 160, "accepted": True, "step": 0.01, "update_norm": 0.01,
            "kept_fraction": 0.02, "logp_chosen_before": [-3.0], "logp_chosen_after": [-2.9],
            "logp_rejected_before": [-4.0], "logp_rejected_after": [-4.1],
            "seconds": 3.0, "perturbations_per_s": 53.3, "ray": ray}


def test_ray_rows_show_worker_throughput_and_redispatches(make_settings, running_service,
                                                         browser, api_token):
    rows = [ray_row(iteration) for iteration in range(3)]
    with running_service(make_settings(dashboard_refresh_s=REFRESH_S)) as http:
        reporter = IterationReporter(str(http.base_url), "ray-run", api_token, timeout_s=5.0,
                                     accept_ratio=0.2)
        assert all(reporter.report(row)["reported"] for row in rows)
        log_in(browser, str(http.base_url), api_token)
        browser.get(f"{http.base_url}/dashboard#run=ray-run")
        wait_for(lambda: shown_iterations(browser) == len(rows), "the Ray run")
        assert browser.find_element("id", "ray").is_displayed()
        for worker in ("worker-0", "worker-1"):
            assert points(browser, "throughput", f"worker:{worker}") == [
                (row["iteration"], row["ray"]["per_worker"][worker]["per_s"]) for row in rows]
        assert points(browser, "redispatch", "redispatched") == [
            (row["iteration"], row["ray"]["redispatched"]) for row in rows]
        assert points(browser, "redispatch", "failures") == [
            (row["iteration"], row["ray"]["failures"]) for row in rows]
        check_page_matches_api(browser, http, "ray-run")
