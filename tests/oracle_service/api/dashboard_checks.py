"""What the dashboard draws, checked against the API's numbers and against `compo plot`'s
series (compo/eval/plots.py). Numbers are compared exactly: the page writes each mark's
value with String(number), which round-trips a double."""

from __future__ import annotations

import httpx
import pytest

from compo.eval import plots
from tests.oracle_service.api.browser import card, line_value, points, positions

VERDICTS = ("a", "b", "tie", "abstain")


def running_sum(rows: list[dict], key: str) -> list[tuple[int, float]]:
    total, out = 0.0, []
    for row in rows:
        total += row[key] if row[key] is not None else 0.0
        out.append((row["iteration"], total))
    return out


def check_drawn_to_scale(driver, chart: str, series: str) -> None:
    """The marks' drawn heights are one affine function of their values (higher = up)."""
    marks = positions(driver, chart, series)
    (y0, cy0), rest = marks[0], [m for m in marks[1:] if m[0] != marks[0][0]]
    assert rest, f"{chart}/{series}: needs two different values to check the scale"
    slopes = [(cy - cy0) / (y - y0) for y, cy in rest]
    assert all(slope < 0 for slope in slopes)
    assert max(slopes) == pytest.approx(min(slopes), rel=1e-6)


def check_votes_match_summaries(driver, summaries: list[dict]) -> None:
    """The five vote/update charts against GET /v1/runs/{id}/iterations."""
    accepted = [s for s in summaries if s["accepted"]]
    skipped = [s for s in summaries if not s["accepted"]]
    assert points(driver, "ratio", "ratio") == [(s["iteration"], s["ratio"]) for s in summaries]
    assert points(driver, "ratio", "accepted") == [(s["iteration"], s["ratio"]) for s in accepted]
    assert points(driver, "ratio", "skipped") == [(s["iteration"], s["ratio"]) for s in skipped]
    assert line_value(driver, "ratio", "threshold") == summaries[-1]["accept_ratio"]
    assert points(driver, "step", "step") == [(s["iteration"], s["step"] or 0.0)
                                              for s in summaries]
    assert points(driver, "kept", "kept") == [(s["iteration"], s["kept_fraction"])
                                              for s in accepted]
    for side in ("chosen", "rejected"):
        key = f"logp_{side}_change"
        assert points(driver, "logp", side) == [(s["iteration"], s[key]) for s in accepted]
        assert points(driver, "logp_total", side) == running_sum(summaries, key)
    assert card(driver, "iterations") == str(len(summaries))
    assert card(driver, "accepted") == str(len(accepted))


def check_comparisons_match_stats(driver, summaries: list[dict], stats: dict | None) -> None:
    """The judge section against GET /v1/runs/{id}/stats (absent: the page says so)."""
    counted = [s for s in summaries if s.get("oracle_comparisons")]
    assert points(driver, "identical", "identical") == [
        (s["iteration"], s["oracle_identical"] / s["oracle_comparisons"]) for s in counted]
    for side in ("base", "perturbed"):
        assert points(driver, "lengths", side) == [
            (s["iteration"], s[f"oracle_{side}_chars"]) for s in counted
            if s.get(f"oracle_{side}_chars") is not None]
    section = driver.execute_script(
        "const s = document.getElementById('judge'); "
        "return [s.hidden, document.getElementById('judge-note').textContent];")
    assert section[0] == (stats is None and not counted)  # shown for a run with comparisons
    if stats is None:
        assert not counted or "no comparison statistics" in section[1]
        return
    its = stats["iterations"]
    for key in VERDICTS:
        assert points(driver, "verdicts", key) == [(i["iteration"], i["votes"][key]) for i in its]
    for key in ("p50", "p95"):
        field = f"latency_ms_{key}"
        assert points(driver, "latency", key) == [(i["iteration"], i[field]) for i in its
                                                  if i[field] is not None]
    assert points(driver, "inconsistent", "inconsistent") == [
        (i["iteration"], i["position_inconsistent"]) for i in its]
    errors = driver.execute_script(
        "return [...document.querySelectorAll('#errors tbody tr')]"
        ".map(r => [r.dataset.kind, r.dataset.count]);")
    assert {kind: int(count) for kind, count in errors} == stats["errors"]
    for name in ("comparisons", "prompt_tokens", "completion_tokens", "cost_usd"):
        shown = card(driver, name)
        assert (float(shown) if shown else None) == stats[name], name


def check_page_matches_api(driver, http: httpx.Client, run_id: str) -> list[dict]:
    """Every chart of the run against the API; returns the iteration summaries."""
    summaries = http.get(f"/v1/runs/{run_id}/iterations").json()["iterations"]
    response = http.get(f"/v1/runs/{run_id}/stats")
    assert response.status_code in (200, 404), response.text
    check_votes_match_summaries(driver, summaries)
    check_comparisons_match_stats(driver, summaries,
                                  response.json() if response.status_code == 200 else None)
    return summaries


def check_page_matches_plots(driver, rows: list[dict], threshold: float) -> None:
    """`compo plot`'s series of the run's metrics.jsonl are the page's points."""
    for state, expected in plots.vote_points(rows).items():
        assert points(driver, "ratio", state) == expected
    assert line_value(driver, "ratio", "threshold") == threshold
    assert points(driver, "step", "step") == plots.step_points(rows)
    assert points(driver, "kept", "kept") == plots.kept_points(rows)
    for side in ("chosen", "rejected"):
        accepted, total = plots.logp_points(rows, side)
        assert points(driver, "logp", side) == accepted
        assert points(driver, "logp_total", side) == total
    assert points(driver, "identical", "identical") == plots.share_points(rows, "identical")
    for side in ("base", "perturbed"):
        assert points(driver, "lengths", side) == plots.length_points(rows, side)
