"""A throwaway PostgreSQL server for tests and benchmarks: initdb + pg_ctl in a temp dir.

Uses the server binaries of Debian's `postgresql` package (`apt-get install postgresql`).
PostgreSQL refuses to run as root, so as root the cluster belongs to the package's
`postgres` user (commands run through `runuser`). Trust auth on 127.0.0.1 only; fsync
off (a killed test server may lose data; the tests kill replicas, not the database).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

SERVER_USER = "postgres"  # who owns the cluster when we are root
SUPERUSER = "compo"
SYSTEM_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")  # runuser lives in sbin
START_TIMEOUT_S = 60
FAST_UNSAFE = "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server would not start."""


def server_binary(name: str) -> str | None:
    """initdb / pg_ctl from PATH, else from /usr/lib/postgresql/<version>/bin (Debian)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def run_as_server_user() -> list[str]:
    """The command prefix that runs as SERVER_USER when we are root (PostgreSQL refuses
    root); found in the system bin directories when a minimal PATH leaves out sbin."""
    if os.geteuid() != 0:
        return []
    path = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_BIN_DIRS])
    runuser = shutil.which("runuser", path=path)
    if runuser is None:
        raise PostgresUnavailable("runuser not found: as root the server runs as "
                                  f"{SERVER_USER!r}; install util-linux or run as another user")
    return [runuser, "-u", SERVER_USER, "--"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """`with ThrowawayPostgres() as pg: pg.new_database()` -> a postgresql:// URL."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port = 0

    def _run(self, *command: str) -> None:
        done = subprocess.run([*run_as_server_user(), *command], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{command[0]} failed: {done.stderr.strip()[-500:]}")

    def start(self) -> ThrowawayPostgres:
        initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise PostgresUnavailable("PostgreSQL is not installed: apt-get install postgresql")
        self.root = Path(tempfile.mkdtemp(prefix="compo-postgres-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
        data, self.port = self.root / "data", _free_port()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {FAST_UNSAFE}"
        try:
            self._run(initdb, "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--no-sync")  # fmt: skip
            self._run(pg_ctl, "-D", str(data), "-l", str(self.root / "server.log"), "-w",
                      "-t", str(START_TIMEOUT_S), "-o", options, "start")  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import asyncpg  # the service extra

        name = f"test_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            connection = await asyncpg.connect(self.url())
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        asyncio.run(create())
        return self.url(name)

    def stop(self) -> None:
        if self.root is not None:
            pg_ctl = server_binary("pg_ctl")
            if pg_ctl is not None and (self.root / "data" / "postmaster.pid").exists():
                self._run(pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "stop")
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
