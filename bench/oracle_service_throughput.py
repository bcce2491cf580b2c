"""Oracle service benchmark (not a test): throughput, cache-hit latency, faults; loopback only.

Starts the fake OpenAI-compatible judge (200 ms per reply) and one service replica (uvicorn)
as subprocesses on 127.0.0.1, fires comparisons from concurrent clients and prints one JSON
line. Usage: python bench/oracle_service_throughput.py [--items 4000] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from oracle_service.client import OracleClient
from oracle_service.core.stats import percentile
from oracle_service.schemas import ComparisonItem, ComparisonResult

TOKEN = "bench-token-3f9c2e"
REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 60.0
TARGET_COMPARISONS_PER_S = 250.0
TARGET_HIT_P95_MS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {STARTUP_TIMEOUT_S} s")


@contextmanager
def stack(latency_s: float, fault_rate: float, workdir: Path) -> Iterator[str]:
    """Fake judge + one service replica as subprocesses; yields the service URL."""
    judge_port, service_port = free_port(), free_port()
    judge = subprocess.Popen(
        [sys.executable, "-m", "oracle_service.testing.fake_judge", "--port", str(judge_port),
         "--latency", str(latency_s), "--fault-rate", str(fault_rate), "--fault-timeout-s", "5"],
        cwd=REPO_ROOT,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPO_ORACLE_")}
    env.update(
        COMPO_ORACLE_API_TOKEN=TOKEN,
        COMPO_ORACLE_PORT=str(service_port),
        COMPO_ORACLE_LOG_LEVEL="warning",
        COMPO_ORACLE_DB_PATH=str(workdir / f"cache-{service_port}.sqlite3"),
        COMPO_ORACLE_JUDGE_BASE_URL=f"http://127.0.0.1:{judge_port}/v1",
        COMPO_ORACLE_JUDGE_API_KEY="sk-bench",
        COMPO_ORACLE_JUDGE_MODEL="fake-judge",
        COMPO_ORACLE_JUDGE_MAX_CONCURRENCY="256",
        COMPO_ORACLE_JUDGE_TIMEOUT_S="1.0",
        COMPO_ORACLE_RETRY_MAX_ATTEMPTS="5",
        COMPO_ORACLE_RETRY_INITIAL_WAIT_S="0.1",
        COMPO_ORACLE_RETRY_MAX_WAIT_S="2.0",
        COMPO_ORACLE_RETRY_JITTER_S="0.1",
    )
    service = subprocess.Popen([sys.executable, "-m", "oracle_service"], cwd=REPO_ROOT, env=env)
    try:
        wait_until_up(f"http://127.0.0.1:{judge_port}/", judge)
        wait_until_up(f"http://127.0.0.1:{service_port}/readyz", service)
        yield f"http://127.0.0.1:{service_port}"
    finally:
        for process in (service, judge):
            process.terminate()
            process.wait(timeout=30)


def make_items(tag: str, count: int) -> list[ComparisonItem]:
    """Distinct pairs; the longer response is the 'right' answer for the fake judge."""
    items = []
    for i in range(count):
        short = f"{tag} answer {i}: " + "concise point. " * 8
        long = short + "extra supporting detail. " * 6
        a, b = (long, short) if i % 2 else (short, long)
        prompt = f"{tag} question {i}: explain the trade-offs of approach {i % 97}."
        items.append(ComparisonItem(prompt=prompt, response_a=a, response_b=b, perturbation=i))
    return items


async def fire(
    url: str, items: list[ComparisonItem], clients: int, batch: int
) -> tuple[list[list[ComparisonResult]], list[list[ComparisonItem]], list[float], float]:
    """`clients` concurrent clients, each sending its share in requests of `batch` items.

    Returns answers and batches (same order), per-request latencies and the wall time.
    Clients are built before the clock starts (each one builds an SSL context: ~20 ms).
    """
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    answers: list[list[ComparisonResult]] = [[] for _ in batches]
    latencies: list[float] = []
    pool = [OracleClient(url, TOKEN, batch_size=batch) for _ in range(clients)]

    async def worker(worker_id: int) -> None:
        for index in range(worker_id, len(batches), clients):
            started = time.perf_counter()
            answers[index] = await pool[worker_id].compare(batches[index])
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(w) for w in range(clients)))
    finally:
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(client.aclose() for client in pool))
    return answers, batches, latencies, elapsed


async def throughput(url: str, args: argparse.Namespace) -> dict:
    items = make_items("throughput", args.items)
    _, _, _, elapsed = await asyncio.wait_for(
        fire(url, items, args.clients, args.batch), args.phase_timeout_s
    )
    return {"items": len(items), "seconds": round(elapsed, 2),
            "comparisons_per_s": round(len(items) / elapsed, 1)}  # fmt: skip


async def cache_hits(url: str, args: argparse.Namespace) -> dict:
    """Single-item requests for cached pairs: one client in sequence, then all clients at once.

    Client-side latency is the full HTTP round trip; server-side is the service's own
    per-item figure from /v1/runs/{run_id}/stats.
    """
    cached = make_items("throughput", args.hit_requests)
    sequential_items = [item.model_copy(update={"run_id": "hits-sequential"}) for item in cached]
    concurrent_items = [item.model_copy(update={"run_id": "hits-concurrent"}) for item in cached]
    async with OracleClient(url, TOKEN, batch_size=1) as client:
        sequential = []
        for item in sequential_items:
            started = time.perf_counter()
            [result] = await client.compare([item])
            sequential.append(time.perf_counter() - started)
            assert result.cached, "expected a cache hit"
        _, _, concurrent, _ = await fire(url, concurrent_items, args.clients, 1)
        server_sequential = await client.stats("hits-sequential")
        server_concurrent = await client.stats("hits-concurrent")
    ms = 1000.0
    return {
        "requests": len(cached),
        "sequential_p50_ms": round(percentile(sequential, 0.5) * ms, 2),
        "sequential_p95_ms": round(percentile(sequential, 0.95) * ms, 2),
        "concurrent_p50_ms": round(percentile(concurrent, 0.5) * ms, 2),
        "concurrent_p95_ms": round(percentile(concurrent, 0.95) * ms, 2),
        "server_sequential_p95_ms": round(server_sequential.latency_ms_p95, 3),
        "server_concurrent_p95_ms": round(server_concurrent.latency_ms_p95, 3),
        "hit_rate": server_concurrent.cache_hit_rate,
    }


async def faults(url: str, args: argparse.Namespace) -> dict:
    """Every item answered exactly once (verdict or explicit abstention), none lost or doubled."""
    items = make_items("faults", args.fault_items)
    answers, batches, _, _ = await asyncio.wait_for(
        fire(url, items, args.clients, args.batch), args.phase_timeout_s
    )
    seen: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    wrong = incoherent = 0
    for batch, results in zip(batches, answers, strict=True):
        for item, result in zip(batch, results, strict=True):
            seen[result.perturbation] += 1
            if result.verdict.value == "abstain":
                incoherent += result.error is None
                outcomes[f"abstain:{result.error.kind.value if result.error else '?'}"] += 1
                continue
            incoherent += result.error is not None
            expected = "a" if len(item.response_a) > len(item.response_b) else "b"
            wrong += result.verdict.value != expected
            outcomes["verdict"] += 1
    async with OracleClient(url, TOKEN) as client:
        server = await client.stats()
    expected_ids = {item.perturbation for item in items}
    return {
        "items": len(items),
        "lost": len(expected_ids - set(seen)),
        "duplicated": sum(count - 1 for count in seen.values() if count > 1),
        "inconsistent_results": incoherent,
        "wrong_verdicts": wrong,
        "outcomes": dict(outcomes),
        "server_counted": server.comparisons,
    }


async def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="oracle-bench-") as tmp:
        with stack(args.latency, 0.0, Path(tmp)) as url:
            result = {"throughput": await throughput(url, args)}
            result["cache_hit_latency"] = await cache_hits(url, args)
        with stack(args.latency, args.fault_rate, Path(tmp)) as url:
            result["faults"] = await faults(url, args)
    fault = result["faults"]
    result["pass"] = {
        "throughput": result["throughput"]["comparisons_per_s"] >= TARGET_COMPARISONS_PER_S,
        "cache_hit_p95": result["cache_hit_latency"]["sequential_p95_ms"] <= TARGET_HIT_P95_MS,
        "faults_each_item_once": fault["lost"] == 0 and fault["duplicated"] == 0
        and fault["inconsistent_results"] == 0 and fault["server_counted"] == fault["items"],
    }  # fmt: skip
    result["config"] = vars(args) | {"cpu_count": os.cpu_count()}
    result["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4000, help="throughput phase items")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--batch", type=int, default=8, help="items per request")
    parser.add_argument("--latency", type=float, default=0.2, help="fake judge seconds/reply")
    parser.add_argument("--hit-requests", type=int, default=500, help="cache-hit requests")
    parser.add_argument("--fault-items", type=int, default=2000, help="fault phase items")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of bad replies")
    parser.add_argument("--phase-timeout-s", type=float, default=240.0, help="per phase bound")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
