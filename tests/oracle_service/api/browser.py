"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, and readers of
the dashboard's charts (every data mark carries data-series, data-x, data-y)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE_ENV = "COMPO_REQUIRE_BROWSER"  # set by .ci/run: a missing browser fails, not skips
# a closed network: no background connections, no QUIC, a fresh profile every time
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1460")
WAIT_S = 120.0  # a guard: a busy machine renders slowly
POLL_S = 0.05


def browser_or_skip() -> None:
    """Skip (or fail under COMPO_REQUIRE_BROWSER=1) when Chromium or Selenium is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401  (the dev extra)
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        message = f"needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium with a fresh profile, quit and removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="compo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S):
    """Poll until `condition()` is truthy; its value, or an AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


def log_in(driver, base_url: str, token: str) -> None:
    """Open the dashboard, get sent to the login form, submit the token there."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/dashboard/login")
    driver.delete_all_cookies()  # a session of an earlier test would skip the login
    driver.get(f"{base_url}/dashboard")
    wait_for(lambda: driver.current_url.endswith("/dashboard/login"), "the login form")
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: driver.current_url == f"{base_url}/dashboard", "the dashboard")


def shown_iterations(driver) -> int:
    """How many iterations the page has drawn (body[data-iterations])."""
    value = driver.execute_script("return document.body.dataset.iterations")
    return int(value) if value else 0


def marks(driver, chart: str, selector: str, *attributes: str) -> list[list[str]]:
    """The given attributes of each element of a chart matching a CSS selector."""
    return driver.execute_script(
        "return [...document.querySelectorAll(`svg[data-chart='${arguments[0]}'] "
        "${arguments[1]}`)].map(e => arguments[2].map(name => e.getAttribute(name)));",
        chart, selector, list(attributes))


def points(driver, chart: str, series: str) -> list[tuple[float, float]]:
    """(x, y) of a chart's data marks of one series, as the page wrote them."""
    found = marks(driver, chart, f"[data-series='{series}']", "data-x", "data-y")
    return [(float(x), float(y)) for x, y in found]


def positions(driver, chart: str, series: str) -> list[tuple[float, float]]:
    """(data y, drawn y in SVG units) of a chart's circles of one series."""
    found = marks(driver, chart, f"circle[data-series='{series}']", "data-y", "cy")
    return [(float(y), float(cy)) for y, cy in found]


def line_value(driver, chart: str, series: str) -> float | None:
    """The data-y of a chart's horizontal line (the skip threshold)."""
    value = driver.execute_script(
        "const e = document.querySelector(`svg[data-chart='${arguments[0]}'] "
        "line[data-series='${arguments[1]}']`); return e && e.dataset.y;", chart, series)
    return None if value is None else float(value)


def card(driver, name: str) -> str:
    """The exact value behind a summary card (data-value)."""
    return driver.execute_script(
        "return document.querySelector(`[data-card='${arguments[0]}']`).dataset.value;", name)
