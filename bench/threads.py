"""The demo's ComPO stage under OpenMP's default wait policy and under PASSIVE (what the CLI
sets, compo/cli/threads.py), quiet and with background busy processes, interleaved round
by round in one run. Each stage runs in a fresh process (OpenMP reads the policy when
torch loads); the two policies must train identical weights.

Prints a line per run and a JSON last line: per load, the median seconds of each policy
and `default_over_passive` (how many times longer the default takes).

  python bench/threads.py                      # loads 0 and 2 busy processes, 2 rounds
  python bench/threads.py --loads 0,2,4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

POLICIES = {"default": None, "passive": "PASSIVE"}
# one ComPO stage of the demo (its split and start model made once), in a fresh process
STAGE = """
import hashlib, json, sys, time
from compo.config import DataConfig, ModelConfig, TrainConfig
from compo.demo.run import DemoSettings
from compo.train import ComPOTrainer, start_run
work, run_id = sys.argv[1], sys.argv[2]
settings = DemoSettings(workdir=work)
config = TrainConfig(model=ModelConfig(path=f"{work}/model"),
                     data=DataConfig(path=f"{work}/split/noisy.jsonl"), compo=settings.compo,
                     seed=settings.seed, run_id=run_id, output_dir=f"{work}/bench-runs")
trainer = ComPOTrainer(config, start_run(config))
started = time.perf_counter()
weight = trainer.run(progress=False)
seconds = time.perf_counter() - started
digest = hashlib.sha256(weight.numpy().tobytes()).hexdigest()[:16]
print(json.dumps({"seconds": seconds, "weights": digest,
                  "iterations": len(trainer.run_dir.metrics())}))
"""


def busy() -> None:
    """A background process that holds one core."""
    while True:
        pass


def stage(work: Path, run_id: str, policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", STAGE, str(work), run_id], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(work: Path) -> None:
    """The demo's start model and split (the ComPO stage's inputs), made once."""
    if (work / "split" / "noisy.jsonl").is_file():
        return
    subprocess.run([sys.executable, "-m", "compo.cli", "demo", "--workdir", str(work)],
                   check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/bench-threads")
    parser.add_argument("--loads", default="0,2", help="busy processes, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    prepare(work)
    seconds: dict[str, dict[str, list[float]]] = {}
    digests = set()
    for load in [int(n) for n in args.loads.split(",")]:
        loaders = [multiprocessing.Process(target=busy, daemon=True) for _ in range(load)]
        for process in loaders:
            process.start()
        try:
            for number in range(args.rounds):
                for name, policy in POLICIES.items():
                    result = stage(work, f"load{load}-{name}-{number}", policy)
                    seconds.setdefault(str(load), {}).setdefault(name, []).append(
                        result["seconds"])
                    digests.add(result["weights"])
                    print(f"load {load}, {name}: {result['seconds']:.1f} s "
                          f"({result['iterations']} iterations, weights {result['weights']})",
                          flush=True)
        finally:
            for process in loaders:
                process.terminate()
    figures = {load: {**{f"{name}_s": round(statistics.median(values), 1)
                         for name, values in arms.items()},
                      "default_over_passive": round(statistics.median(arms["default"])
                                                    / statistics.median(arms["passive"]), 2)}
               for load, arms in seconds.items()}
    print(json.dumps({"cpus": os.cpu_count(), "loads": figures,
                      "same_weights": len(digests) == 1}))


if __name__ == "__main__":
    main()
