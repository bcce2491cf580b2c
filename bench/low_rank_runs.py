"""bench/low_rank.py's parts that need full training runs with low-rank directions: (c) the
demo's noisy pairs at equal m and equal ComPO seconds, (d) the learning bench's length
contrast with the service oracle. Each runs only when the configuration accepts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from compo.config import ComPOConfig

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"gaussian": None, "rank1": 1, "rank4": 4, "rank16": 16}

NOT_MEASURED = ("not measured: needs a full run with low-rank directions (compo.directions "
                "on ComPOConfig, the low-rank oracle and update), not on this branch yet")
QUICK_NOTE = "not measured: --quick runs no demo"
LEARNING_NOTE = ("not measured: needs the service oracle with low-rank directions in a "
                 "training run (compo.directions on ComPOConfig, accepted with oracle.kind "
                 "service)")
DEMO_M = 1600  # the demo's m (DemoSettings)


def full_runs() -> bool:
    """Whether a training run can use low-rank directions (compo.directions on ComPOConfig)."""
    return "directions" in ComPOConfig.model_fields


def demo_run(rank: int | None, m: int, workdir: Path) -> dict:
    """`compo demo` with m directions of the kind: noisy pairs with y+ up and y- down,
    accepted iterations, seconds of the ComPO stage (sum over its iterations)."""
    from contextlib import redirect_stdout

    from compo import fileio
    from compo.demo.run import DemoSettings, run_demo

    settings = DemoSettings(workdir=workdir)
    fields = {**settings.compo.model_dump(), "num_perturbations": m}
    if rank is not None:
        fields["directions"] = {"kind": "low_rank", "rank": rank}
    settings.compo = ComPOConfig(**fields)
    with redirect_stdout(sys.stderr):  # the demo's table: the JSON stays the last line
        summary = run_demo(settings, progress=False)
    metrics = fileio.read_jsonl(workdir / "runs" / "compo" / "metrics.jsonl")
    return {"m": m, "both_share": round(summary["both"] / summary["pairs"], 3),
            "both": summary["both"], "pairs": summary["pairs"],
            "accepted": summary["accepted"], "iterations": summary["iterations"],
            "compo_seconds": round(sum(row["seconds"] for row in metrics), 1)}


def demo_part(workdir: Path) -> dict:
    """(c): every kind at the demo's m, and each low rank again at the m that takes the
    Gaussian run's ComPO seconds (m scaled by the seconds ratio, in multiples of 16)."""
    out = {"equal_m": {}, "equal_time": {}}
    for name, rank in KINDS.items():
        out["equal_m"][name] = demo_run(rank, DEMO_M, workdir / name)
    dense = out["equal_m"]["gaussian"]["compo_seconds"]
    out["equal_time"]["gaussian"] = out["equal_m"]["gaussian"]
    for name, rank in KINDS.items():
        if rank is not None:
            ratio = dense / max(out["equal_m"][name]["compo_seconds"], 1e-9)
            m = max(16, min(8 * DEMO_M, int(DEMO_M * ratio) // 16 * 16))
            out["equal_time"][name] = demo_run(rank, m, workdir / f"{name}-time")
    return out


def service_low_rank() -> bool:
    """Whether a run with the service oracle accepts low-rank directions."""
    from pydantic import ValidationError

    from compo.config import DataConfig, ModelConfig, OracleConfig, TrainConfig

    if not full_runs():
        return False
    try:
        TrainConfig(model=ModelConfig(path="m"), data=DataConfig(path="d"),
                    compo=ComPOConfig(directions={"kind": "low_rank", "rank": 4}),
                    oracle=OracleConfig(kind="service", service_url="http://judge"))
    except ValidationError:
        return False
    return True


def learning_part(workdir: Path) -> dict:
    """(d): bench/learning.py's length contrast on seed 0 (the judge preferring the
    shorter vs the longer response; mean held-out length in characters after training),
    Gaussian vs rank 4, the same settings otherwise."""
    out = {}
    for name in ("gaussian", "rank4"):
        command = [sys.executable, str(ROOT / "bench" / "learning.py"), "--seeds", "0",
                   "--oracle", "shorter,longer", "--directions", name,
                   "--workdir", str(workdir / "learning")]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"bench/learning.py --directions {name} failed: "
                               f"{result.stderr.strip().splitlines()[-1]}")
        rows = learning_rows(result.stdout)
        out[name] = {"start": rows["shorter"]["start"], "shorter": rows["shorter"]["after"],
                     "longer": rows["longer"]["after"],
                     "contrast": round(rows["longer"]["after"] - rows["shorter"]["after"], 2),
                     "accepted": {k: rows[k]["accepted"] for k in ("shorter", "longer")},
                     "iterations": rows["shorter"]["iterations"]}
    return out


def learning_rows(stdout: str) -> dict:
    """bench/learning.py's JSON lines, by oracle."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {row["oracle"]: row for row in rows}
