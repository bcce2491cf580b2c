"""Oracle service robustness figures (not a test): deadlines, starvation, SIGTERM, restart,
memory under oversized batches and under the worst judge replies at full batches, and two
replicas behind one PostgreSQL store.

Each phase starts its own judge and replica(s) on 127.0.0.1; `--service-root DIR` serves
from another checkout (the previous code) for before/after figures. Prints one JSON line.
Usage: python bench/oracle_service_robustness.py --phases deadlines starvation ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from oracle_service_throughput import BASE_SETTINGS, HEADERS, fake_judge, fire, make_items

from oracle_service.testing.fake_judge import BackgroundServer
from oracle_service.testing.hostile_judge import HostileJudge, HostileTiming
from oracle_service.testing.postgres import ThrowawayPostgres
from oracle_service.testing.processes import REPO_ROOT, ServiceProcess

PHASES = ["retry_after", "trickle", "starvation", "shutdown", "restart", "memory",
          "worst_replies", "replicas"]  # fmt: skip
CAP_S = 600.0  # the longest any one measurement may take
OVERSIZED_ITEMS = 12_000  # ~7 MB bodies, far over max_batch_size (256)
BODIES_AT_ONCE = 10
KIB = 1024
MAX_RESPONSE_BYTES = 1024 * KIB  # the service's default judge_max_response_bytes (read cap)
MAX_BATCH = 256  # the service's default max_batch_size
RSS_GUARD_MIB = 10 * KIB  # the replica is killed past this (this machine is shared)
# The service's own defaults, but for what every replica needs.
MINIMAL = {k: BASE_SETTINGS[k] for k in ("api_token", "log_level", "judge_api_key", "judge_model")}


def post(url: str, items: list[dict], timeout: float = CAP_S) -> tuple[float, object]:
    """(seconds, results or the error's name) of one comparisons request."""
    started = time.monotonic()
    try:
        response = httpx.post(f"{url}/v1/comparisons", json={"items": items}, headers=HEADERS,
                              timeout=timeout)  # fmt: skip
        outcome = response.json().get("results", response.status_code)
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    return round(time.monotonic() - started, 2), outcome


class Stack:
    """A judge (in this process) and one replica serving from `root`."""

    def __init__(self, judge, root: Path, workdir: Path, name: str, **settings) -> None:
        self.upstream = BackgroundServer(judge, shutdown_s=0)
        self.values = {**MINIMAL, "db_path": workdir / f"{name}.sqlite3", **settings}
        self.root, self.log = root, workdir / f"{name}.log"

    def __enter__(self) -> ServiceProcess:
        self.upstream.start()
        self.values["judge_base_url"] = f"{self.upstream.url}/v1"
        self.replica = ServiceProcess(self.values, self.log, self.root).start()
        return self.replica

    def __exit__(self, *exc_info) -> None:
        self.replica.kill()
        self.upstream.stop()


def hostile(kind: str, **timing) -> HostileJudge:
    return HostileJudge(plan=lambda prompt: kind if prompt.startswith(kind) else None,
                        timing=HostileTiming(**timing))  # fmt: skip


def verdict_of(result: object) -> object:
    return result[0]["verdict"] if isinstance(result, list) else result


def retry_after(root: Path, workdir: Path, args) -> dict:
    """Worst-case request time when every call waits, then answers 429 Retry-After: 3600."""
    judge = hostile("retry_after_huge", retry_after_delay_s=args.retry_after_delay_s)
    with Stack(judge, root, workdir, "retry-after", judge_timeout_s=args.judge_timeout_s) as r:
        seconds, result = post(r.url, make_items("retry_after_huge", 1))
    return {"request_s": seconds, "outcome": verdict_of(result), "calls": len(judge.served)}


def trickle(root: Path, workdir: Path, args) -> dict:
    """Worst-case request time when every reply trickles in a byte at a time."""
    judge = hostile("trickle", trickle_interval_s=args.trickle_interval_s)
    with Stack(judge, root, workdir, "trickle", judge_timeout_s=args.trickle_timeout_s) as r:
        seconds, result = post(r.url, make_items("trickle", 1))
    return {"request_s": seconds, "outcome": verdict_of(result), "calls": len(judge.served)}


def starvation(root: Path, workdir: Path, args) -> dict:
    """64 hung calls, then one healthy item: how long does the healthy one wait?"""
    judge = hostile("hang")
    with Stack(judge, root, workdir, "starvation", judge_timeout_s=args.judge_timeout_s) as r:
        hung = make_items("hang", args.hung_calls)
        for start in range(0, len(hung), 8):
            threading.Thread(target=post, args=(r.url, hung[start : start + 8]),
                             daemon=True).start()  # fmt: skip
        while judge.in_flight < args.hung_calls:
            time.sleep(0.05)
        seconds, result = post(r.url, make_items("healthy", 1), timeout=CAP_S)
    return {"hung_calls": args.hung_calls, "healthy_item_s": seconds,
            "healthy_outcome": verdict_of(result)}


def shutdown(root: Path, workdir: Path, args) -> dict:
    """SIGTERM while one judge call hangs: seconds until the process has exited."""
    judge = hostile("hang")
    with Stack(judge, root, workdir, "shutdown", judge_timeout_s=args.judge_timeout_s) as r:
        threading.Thread(target=post, args=(r.url, make_items("hang", 1)), daemon=True).start()
        while judge.in_flight == 0:
            time.sleep(0.05)
        started = time.monotonic()
        r.process.terminate()
        try:
            r.process.wait(timeout=args.shutdown_cap_s)
            return {"sigterm_to_exit_s": round(time.monotonic() - started, 2)}
        except Exception:
            return {"sigterm_to_exit_s": f"still running after {args.shutdown_cap_s} s"}


def restart(root: Path, workdir: Path, args) -> dict:
    """Stats of a run before and after a restart on the same store."""
    judge = HostileJudge(fault_rate=0.2, seed=3, timing=HostileTiming(0.2, 0.1, 5.0))
    stats_url = "/v1/runs/restart/stats"
    stack = Stack(judge, root, workdir, "restart", item_deadline_s=10, request_deadline_s=15)
    with stack as r:
        asyncio.run(fire(r.url, make_items("restart", 400, run_id="restart"), 10, 10))
        before = httpx.get(r.url + stats_url, headers=HEADERS).json()
        r.stop()
        r.start()
        after = httpx.get(r.url + stats_url, headers=HEADERS).json()
    return {"comparisons_before": before.get("comparisons"),
            "comparisons_after": after.get("comparisons", after), "equal": before == after}


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


def memory(root: Path, workdir: Path, args) -> dict:
    """Peak RSS of the replica while 10 bodies of ~7 MB, each far over the batch limit, land."""
    body = json.dumps({"items": make_items("big", OVERSIZED_ITEMS)}).encode()
    with Stack(HostileJudge(fault_rate=0.0), root, workdir, "memory") as r:
        start_kib = peak_rss_kib(r.process.pid)

        def send() -> None:
            httpx.post(f"{r.url}/v1/comparisons", content=body, timeout=CAP_S,
                       headers={**HEADERS, "Content-Type": "application/json"})  # fmt: skip

        threads = [threading.Thread(target=send) for _ in range(BODIES_AT_ONCE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"body_mib": round(len(body) / KIB / KIB, 1), "bodies": BODIES_AT_ONCE,
                "peak_rss_mib_idle": round(start_kib / KIB), "peak_rss_mib_after":
                round(peak_rss_kib(r.process.pid) / KIB)}  # fmt: skip


def current_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


def worst_replies(root: Path, workdir: Path, args) -> dict:
    """Peak RSS while `--batches` full batches (max_batch_size items) are answered at once
    by a judge whose every reply is an error body just under the read cap, with status
    `--status` (500: retried; 200: not a completion, read whole); the service's defaults
    otherwise (retries, concurrency, caps)."""
    body_bytes = MAX_RESPONSE_BYTES - KIB
    judge = HostileJudge(plan=lambda prompt: "huge_error", huge_error_bytes=body_bytes,
                         huge_error_status=args.status)  # fmt: skip
    with Stack(judge, root, workdir, "worst-replies") as r:
        idle_kib, killed = peak_rss_kib(r.process.pid), threading.Event()
        outcomes: list[object] = []

        def send(batch: int) -> None:
            outcomes.append(post(r.url, make_items(f"worst{batch}", MAX_BATCH))[1])

        threads = [threading.Thread(target=send, args=(b,)) for b in range(args.batches)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):  # a guard, not a measurement
            if current_rss_kib(r.process.pid) > RSS_GUARD_MIB * KIB and not killed.is_set():
                killed.set()
                r.kill()
            time.sleep(0.1)
        seconds = round(time.monotonic() - started, 1)
        peak_kib = None if killed.is_set() else peak_rss_kib(r.process.pid)
    kinds = [x["error"]["kind"] if x["error"] else x["verdict"]
             for result in outcomes if isinstance(result, list) for x in result]  # fmt: skip
    return {"batches": args.batches, "items": args.batches * MAX_BATCH,
            "status": args.status, "error_body_bytes": body_bytes, "judge_calls": len(judge.served),
            "peak_rss_mib_idle": round(idle_kib / KIB),
            "peak_rss_mib": f"killed above {RSS_GUARD_MIB}" if peak_kib is None
            else round(peak_kib / KIB), "seconds": seconds,
            "outcomes": dict(Counter(kinds))}  # fmt: skip


def replicas(root: Path, workdir: Path, args) -> dict:
    """Two replicas behind one PostgreSQL store: throughput, shared stats and cache, a kill."""
    with ThrowawayPostgres() as pg, fake_judge(args.latency) as judge_url:
        settings = {**BASE_SETTINGS, "judge_base_url": judge_url, "store_url": pg.new_database()}
        one, two = (ServiceProcess(settings, workdir / f"pg-{i}.log", root).start() for i in (1, 2))
        try:
            items = make_items("pg", args.replica_items, run_id="pg")
            half = len(items) // 2
            started = time.perf_counter()
            asyncio.run(both(one.url, two.url, items[:half], items[half:], args.clients // 2))
            seconds = time.perf_counter() - started
            stats = [httpx.get(f"{r.url}/v1/runs/pg/stats", headers=HEADERS).json()
                     for r in (one, two)]  # fmt: skip
            _, again = post(two.url, items[:8])  # answered by replica one
            return {"items": len(items), "seconds": round(seconds, 2),
                    "comparisons_per_s": round(len(items) / seconds, 1),
                    "stats_equal_on_both": stats[0] == stats[1],
                    "stats_comparisons": stats[0]["comparisons"],
                    "cached_on_the_other": all(r["cached"] for r in again),
                    "kill": kill_mid_load(one, two, args)}  # fmt: skip
        finally:
            one.kill()
            two.kill()


def kill_mid_load(victim: ServiceProcess, survivor: ServiceProcess, args) -> dict:
    """SIGKILL one replica under load; is everything it answered counted and cached?"""
    items, answered = make_items("kill", args.replica_items, run_id="kill"), []

    def load(worker: int) -> None:
        for start in range(worker * 8, len(items), 8 * args.kill_clients):
            _, result = post(victim.url, items[start : start + 8], timeout=60)
            if not isinstance(result, list):
                return  # the replica is gone
            answered.extend(result)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(args.kill_clients)]
    for thread in threads:
        thread.start()
    while len(answered) < args.kill_after:
        time.sleep(0.01)
    victim.kill()
    for thread in threads:
        thread.join()
    counted = httpx.get(f"{survivor.url}/v1/runs/kill/stats", headers=HEADERS).json()
    ids = {r["perturbation"] for r in answered}
    replay = [item for item in items if item["perturbation"] in ids]
    cached = [r["cached"] for at in range(0, len(replay), 200)
              for r in post(survivor.url, replay[at : at + 200])[1]]  # fmt: skip
    return {"answered_before_kill": len(answered), "counted": counted["comparisons"],
            "answered_not_cached": cached.count(False),
            "lost": len(answered) - min(len(answered), counted["comparisons"])}  # fmt: skip


async def both(url_one: str, url_two: str, first: list, second: list, clients: int) -> None:
    await asyncio.gather(fire(url_one, first, clients, 8), fire(url_two, second, clients, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    parser.add_argument("--service-root", default=str(REPO_ROOT), help="checkout to serve from")
    parser.add_argument("--retry-after-delay-s", type=float, default=59.0)
    parser.add_argument("--judge-timeout-s", type=float, default=30.0, help="as the service's")
    parser.add_argument("--trickle-interval-s", type=float, default=2.0)
    parser.add_argument("--trickle-timeout-s", type=float, default=5.0)
    parser.add_argument("--hung-calls", type=int, default=64)
    parser.add_argument("--shutdown-cap-s", type=float, default=120.0)
    parser.add_argument("--replica-items", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--kill-clients", type=int, default=8, help="load threads at the kill")
    parser.add_argument("--kill-after", type=int, default=400, help="answered items, then kill")
    parser.add_argument("--latency", type=float, default=0.2, help="fake judge seconds/reply")
    parser.add_argument("--batches", type=int, default=4, help="worst_replies: at once")
    parser.add_argument("--status", type=int, default=500, help="worst_replies: their status")
    args = parser.parse_args()
    root = Path(args.service_root).resolve()
    result: dict = {"service_root": str(root), "load_average_1m_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="oracle-robust-") as tmp:
        for phase in args.phases:
            started = time.monotonic()
            result[phase] = globals()[phase](root, Path(tmp), args)
            result[phase]["phase_s"] = round(time.monotonic() - started, 1)
    result["load_average_1m_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
