"""Service replicas as real processes (`python -m oracle_service`), for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
POLL_S = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def wait_until_ready(
    url: str, process: subprocess.Popen, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Poll GET /readyz until 200; RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not is_ready(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready (exit code {process.poll()})")
        time.sleep(POLL_S)


def service_env(
    settings: Mapping[str, object], port: int, root: Path = REPO_ROOT
) -> dict[str, str]:
    """This process's environment without COMPO_ORACLE_*, plus the given settings; the
    service's code is imported from `root` (another checkout, for A/B benchmarks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPO_ORACLE_")}
    env.update({f"COMPO_ORACLE_{name.upper()}": str(value) for name, value in settings.items()})
    env["COMPO_ORACLE_PORT"] = str(port)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


class ServiceProcess:
    """One replica on 127.0.0.1; `url` once `start()` returns (the service is ready)."""

    def __init__(
        self, settings: Mapping[str, object], log: Path | None = None, root: Path = REPO_ROOT
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = service_env(settings, self.port, root)
        self._root = root
        self._log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        output = subprocess.DEVNULL if self._log is None else self._log.open("ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "oracle_service"], cwd=self._root, env=self._env,
                stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # the child has its own copy
        try:
            wait_until_ready(self.url, self.process)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; log: {self._log}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as when a machine dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> float:
        """SIGTERM and wait for the exit; the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
