"""`compo probe` through the real CLI against the real service before the fake judge, and its
recommendation rule."""

import os
import subprocess
import sys

import torch
import yaml

from compo.diagnostics import COIN_Z, coin_z
from compo.service_oracle.probe import (
    ALPHA,
    MIN_PAIRS,
    ProbeRow,
    permutation_p,
    recommendation,
)
from tests.oracle_service.scripted import TOKEN_ENV

DIRECTIONS = 8
PROMPTS = 2
TINY, LARGE = 1e-9, 3.0  # raw radii: no response changes; most responses change


def prefer_shorter(prompt: str, first: str, second: str) -> str:
    """A position-consistent judge with a known taste: the shorter response wins."""
    if len(first) == len(second):
        return "TIE"
    return "A" if len(first) < len(second) else "B"


def probe_yaml(tmp_path, model_dir, pairs_file, url):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(model_dir)}, "data": {"path": str(pairs_file)}, "seed": 2,
        "run_id": "p1", "oracle": {"kind": "service", "service_url": url,
                                   "token_env": TOKEN_ENV, "max_new_tokens": 8,
                                   "radius": {"mode": "raw", "value": 1.0}}}))
    return path


def table_rows(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["radius"])
    header = lines[start].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[start + 1:]
            if line.split() and line.split()[0][0].isdigit()]


def test_probe_measures_each_radius_against_the_service_and_recommends(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge,
        api_token):
    fake_judge.judge.decide = prefer_shorter
    with running_service(make_settings()) as http:
        config = probe_yaml(tmp_path, model_dir, pairs_file, str(http.base_url))
        done = subprocess.run(
            [sys.executable, "-m", "compo.cli", "probe", "--config", str(config),
             "--radii", f"{TINY},{LARGE}", "--prompts", str(PROMPTS),
             "--directions", str(DIRECTIONS)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, TOKEN_ENV: api_token})
        assert done.returncode == 0, done.stderr
        stats = [http.get(f"/v1/runs/p1.probe-{n}{suffix}/stats").json()
                 for n in (0, 1) for suffix in ("", ".check")]
    tiny, large = table_rows(done.stdout)
    assert (tiny["radius"], tiny["differ"], tiny["pairs"], tiny["signal"]) == (
        f"{TINY:g}", "0%", "0", "no")
    assert large["radius"] == f"{LARGE:g}" and large["differ"] == "100%"
    assert int(large["compared"]) == 2 * PROMPTS * DIRECTIONS
    # every comparison reached the service: +z under the probe's run id, -z under .check
    assert [s["comparisons"] for s in stats] == [PROMPTS * DIRECTIONS] * 4
    assert stats[0]["votes"]["tie"] == stats[1]["votes"]["tie"] == PROMPTS * DIRECTIONS
    plus, minus = ({k: s["votes"][k] for k in ("a", "b")} for s in stats[2:])
    pairs = int(large["pairs"])  # both verdicts decisive: at most the decisive ones of a side
    assert 0 < pairs <= min(sum(plus.values()), sum(minus.values()))
    signal = pairs >= MIN_PAIRS and float(large["p"]) <= ALPHA / 2  # two settings tested
    assert large["signal"] == ("yes" if signal else "no")
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"recommended: oracle.radius {{mode: raw, value: {LARGE:g}}}"
                           if signal else "no setting showed signal")


def row(value, pairs=16, opposite=16, b=16, identical=0, temperature=0.0, p=1e-4) -> ProbeRow:
    return ProbeRow(value, value / 10, temperature, 32, identical, 0, pairs, opposite, b, p)


def test_the_smallest_radius_with_signal_is_recommended():
    rows = [row(0.5, opposite=8, p=0.3), row(1.0), row(2.0), row(1.0, temperature=0.7)]
    assert recommendation(rows, "logit").startswith(
        "recommended: oracle.radius {mode: logit, value: 1} (r = 0.1) with "
        "oracle.temperature 0:")
    assert not row(4.0, pairs=MIN_PAIRS - 1, opposite=MIN_PAIRS - 1).signal(1)  # too few pairs


def test_signal_is_corrected_for_the_number_of_settings_tested():
    borderline = row(1.0, p=0.02)
    assert borderline.signal(1) and not borderline.signal(4)  # 0.02 > 0.05 / 4
    assert recommendation([borderline] * 4, "raw").startswith("no setting showed signal")


def test_without_signal_the_advice_names_the_cause():
    assert "try larger radii" in recommendation([row(1.0, pairs=0, identical=30, p=None)],
                                                "raw")
    coin = recommendation([row(1.0, opposite=8, p=0.5)], "raw")
    assert coin.startswith("no setting showed signal") and "cannot tell +z from -z" in coin


def test_verdicts_opposite_at_plus_and_minus_z_have_a_small_p_value():
    plus = torch.randint(0, 2, (16, 4), generator=torch.Generator().manual_seed(1)) * 2 - 1.0
    assert permutation_p(plus, -plus) < ALPHA / 8
    assert permutation_p(plus, plus) > 0.5  # the same verdicts: the opposite of signal


def clustered_null(generator: torch.Generator, directions: int, prompts: int) -> torch.Tensor:
    """Verdicts [directions, prompts] led by each direction's own effect (shared by its
    prompts), drawn independently for +z and -z: a judge that cannot tell z from -z."""
    effect = torch.randn(directions, 1, generator=generator)
    return torch.sign(3 * effect + torch.randn(directions, prompts, generator=generator))


def test_the_test_stays_honest_when_a_direction_moves_all_its_prompts_alike():
    """The pooled coin z (pairs counted as independent) calls such a judge a signal far
    more often than its 2.3% nominal rate; the permutation test over directions keeps
    its level."""
    generator = torch.Generator().manual_seed(0)
    trials, directions, prompts = 200, 16, 8
    coin_hits = test_hits = 0
    for trial in range(trials):
        plus, minus = (clustered_null(generator, directions, prompts) for _ in range(2))
        decisive = (plus != 0) & (minus != 0)
        pairs = int(decisive.sum())
        opposite = int((decisive & (plus != minus)).sum())
        b = int((decisive & (plus < 0)).sum() + (decisive & (minus < 0)).sum())
        coin_hits += coin_z(pairs, opposite, b) >= COIN_Z
        test_hits += permutation_p(plus, minus, permutations=500, seed=trial) <= ALPHA
    assert coin_hits / trials > 0.1  # 19% measured
    assert test_hits / trials <= 2 * ALPHA
