"""Oracle service benchmark (not a test): throughput, cache-hit latency, a hostile fault run.

Loopback only. The fake judge (200 ms per reply) runs as a subprocess, one service replica
(`python -m oracle_service`, uvicorn) as another; 50 concurrent clients in this process.
`--service-root DIR` runs the service from another checkout (the same load, judge and
clients), which is how the ratio to the previous code is measured in one session.
Prints one JSON line. Usage: python bench/oracle_service_throughput.py [--phases ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from oracle_service.testing.fake_judge import BackgroundServer
from oracle_service.testing.hostile_judge import HostileJudge, HostileTiming
from oracle_service.testing.processes import REPO_ROOT, ServiceProcess, free_port

TOKEN = "bench-token-3f9c2e-8d7a6b5c4e"
MS = 1000.0
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
CLIENT_TIMEOUT_S = 300.0  # compo's own oracle.timeout_s
BASE_SETTINGS = {  # as in the previous benchmark, so figures compare
    "api_token": TOKEN, "log_level": "warning", "judge_api_key": "sk-bench",
    "judge_model": "fake-judge", "judge_max_concurrency": 256, "judge_timeout_s": 1.0,
    "retry_max_attempts": 5, "retry_initial_wait_s": 0.1, "retry_max_wait_s": 2.0,
    "retry_jitter_s": 0.1,
}  # fmt: skip
# The fault run: calls are cut at 2 s and items at 20 s (settings the old code ignores).
FAULT_SETTINGS = {"judge_timeout_s": 2.0, "item_deadline_s": 20.0, "request_deadline_s": 30.0}
FAULT_TIMING = HostileTiming(retry_after_delay_s=1.0, trickle_interval_s=0.5)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1])."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@contextmanager
def fake_judge(latency_s: float) -> Iterator[str]:
    port = free_port()
    judge = subprocess.Popen(
        [sys.executable, "-m", "oracle_service.testing.fake_judge", "--port", str(port),
         "--latency", str(latency_s)], cwd=REPO_ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
                break
            except httpx.TransportError:
                if judge.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fake judge did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        judge.terminate()
        judge.wait(timeout=30)


def make_items(tag: str, count: int, run_id: str | None = None) -> list[dict]:
    """Distinct pairs; the longer response is the 'right' answer for the judges."""
    items = []
    for i in range(count):
        short = f"{tag} answer {i}: " + "concise point. " * 8
        long = short + "extra supporting detail. " * 6
        a, b = (long, short) if i % 2 else (short, long)
        prompt = f"{tag} question {i}: explain the trade-offs of approach {i % 97}."
        item = {"prompt": prompt, "response_a": a, "response_b": b, "perturbation": i}
        items.append(item if run_id is None else {**item, "run_id": run_id})
    return items


async def fire(url: str, items: list[dict], clients: int, batch: int) -> dict:
    """`clients` concurrent connections, each posting its share in requests of `batch` items.

    A request that fails (non-200, connection error) loses its items; they are counted.
    """
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    answers: list[list[dict]] = [[] for _ in batches]
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    pool = [httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=CLIENT_TIMEOUT_S)
            for _ in range(clients)]  # fmt: skip

    async def worker(worker_id: int) -> None:
        for index in range(worker_id, len(batches), clients):
            started = time.perf_counter()
            try:
                response = await pool[worker_id].post("/v1/comparisons",
                                                      json={"items": batches[index]})  # fmt: skip
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                failures[f"HTTP {response.status_code}"] += 1
                continue
            answers[index] = response.json()["results"]

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(w) for w in range(clients)))
    finally:
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(client.aclose() for client in pool))
    return {"answers": answers, "batches": batches, "latencies": latencies,
            "seconds": elapsed, "failures": dict(failures)}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(url: str, pid: int, args: argparse.Namespace) -> dict:
    """Wall-clock rate, and the replica's CPU per 1,000 comparisons (less noisy when the
    machine is shared: other jobs stretch wall time much more than our CPU time)."""
    items = make_items("throughput", args.items)
    cpu_before = cpu_seconds(pid)
    run = await fire(url, items, args.clients, args.batch)
    cpu = cpu_seconds(pid) - cpu_before
    answered = sum(len(a) for a in run["answers"])
    return {"items": len(items), "answered": answered, "seconds": round(run["seconds"], 2),
            "comparisons_per_s": round(answered / run["seconds"], 1),
            "service_cpu_s_per_1000": round(cpu / answered * 1000, 3),
            "failures": run["failures"]}  # fmt: skip


async def cache_hits(url: str, args: argparse.Namespace) -> dict:
    """Single-item requests for cached pairs (one client in sequence), client round trip."""
    items = make_items("throughput", args.hit_requests, run_id="hits")
    sequential = []
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as http:
        for item in items:
            started = time.perf_counter()
            response = await http.post("/v1/comparisons", json={"items": [item]})
            sequential.append(time.perf_counter() - started)
            assert response.json()["results"][0]["cached"], "expected a cache hit"
        server = (await http.get("/v1/runs/hits/stats")).json()
    return {"requests": len(items),
            "sequential_p50_ms": round(percentile(sequential, 0.5) * MS, 2),
            "sequential_p95_ms": round(percentile(sequential, 0.95) * MS, 2),
            "server_p95_ms": server.get("latency_ms_p95")}  # fmt: skip


async def faults(url: str, judge: HostileJudge, args: argparse.Namespace) -> dict:
    """The hostile judge at `fault_rate`: every item once, verdicts only from good replies."""
    items = make_items("faults", args.fault_items, run_id="faults")
    run = await fire(url, items, args.clients, args.fault_batch)
    seen: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    served = judge.outcomes()
    verdict_on_failure = wrong = 0
    for batch, results in zip(run["batches"], run["answers"], strict=True):
        for item, result in zip(batch, results or [None] * len(batch), strict=True):
            if result is None:
                continue  # the request failed: its items are lost
            seen[result["perturbation"]] += 1
            error = result.get("error")
            if result["verdict"] == "abstain":
                outcomes[f"abstain:{error['kind'] if error else '?'}"] += 1
                continue
            outcomes["verdict"] += 1
            verdict_on_failure += served.get(item["prompt"], ["?"])[-1] != "good" or bool(error)
            expected = "a" if len(item["response_a"]) > len(item["response_b"]) else "b"
            wrong += result["verdict"] != expected
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as http:
        stats = (await http.get("/v1/runs/faults/stats")).json()
    latencies = run["latencies"]
    return {
        "items": len(items), "batches": len(run["batches"]),
        "lost": len(items) - len(seen), "duplicated": sum(c - 1 for c in seen.values()),
        "abstained": sum(v for k, v in outcomes.items() if k.startswith("abstain")),
        "verdict_on_failure": verdict_on_failure, "wrong_verdicts": wrong,
        "failed_requests": run["failures"], "outcomes": dict(sorted(outcomes.items())),
        "stats_comparisons": stats.get("comparisons"), "answered": sum(seen.values()),
        "request_p95_s": round(percentile(latencies, 0.95) or 0, 2),
        "request_max_s": round(max(latencies, default=0), 2),
        "fault_kinds_served": len({call.kind for call in judge.served} - {"good"}),
        "seconds": round(run["seconds"], 1),
    }  # fmt: skip


def service(settings: dict, workdir: Path, root: Path, name: str) -> ServiceProcess:
    values = {**settings, "db_path": workdir / f"{name}.sqlite3"}
    return ServiceProcess(values, workdir / f"{name}.log", root)


async def run(args: argparse.Namespace) -> dict:
    root = Path(args.service_root).resolve()
    result: dict = {"service_root": str(root), "load_average_1m_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="oracle-bench-") as tmp:
        workdir = Path(tmp)
        if {"throughput", "cache_hits"} & set(args.phases):
            with fake_judge(args.latency) as judge_url:
                settings = {**BASE_SETTINGS, "judge_base_url": judge_url}
                with service(settings, workdir, root, "throughput") as replica:
                    pid = replica.process.pid
                    result["throughput"] = await throughput(replica.url, pid, args)
                    if "cache_hits" in args.phases:
                        result["cache_hit_latency"] = await cache_hits(replica.url, args)
        if "faults" in args.phases:
            judge = HostileJudge(fault_rate=args.fault_rate, timing=FAULT_TIMING, seed=1)
            with BackgroundServer(judge, shutdown_s=0) as upstream:
                settings = {**BASE_SETTINGS, **FAULT_SETTINGS,
                            "judge_base_url": f"{upstream.url}/v1"}  # fmt: skip
                with service(settings, workdir, root, "faults") as replica:
                    result["faults"] = await faults(replica.url, judge, args)
    result["config"] = vars(args) | {"cpu_count": os.cpu_count()}
    result["load_average_1m_after"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", nargs="+", default=["throughput", "cache_hits", "faults"],
                        choices=["throughput", "cache_hits", "faults"])  # fmt: skip
    parser.add_argument("--service-root", default=str(REPO_ROOT), help="checkout to serve from")
    parser.add_argument("--items", type=int, default=4000, help="throughput phase items")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--batch", type=int, default=8, help="items per request")
    parser.add_argument("--latency", type=float, default=0.2, help="fake judge seconds/reply")
    parser.add_argument("--hit-requests", type=int, default=500, help="cache-hit requests")
    parser.add_argument("--fault-items", type=int, default=2000, help="fault phase items")
    parser.add_argument("--fault-batch", type=int, default=10, help="items per fault request")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of bad replies")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
