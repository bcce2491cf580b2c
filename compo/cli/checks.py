"""What `compo train` checks before it creates a run directory or loads a model: the run
directory to resume, the model and data paths, the Ray cluster (joined here when an
address is given), the oracle service. Each failure is a CompoError of one line naming the
file, field or setting and the fix."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from compo.config import TrainConfig
from compo.config_files import require_path
from compo.errors import DistributedError, ModelError, RunError
from compo.oracles import oracle_kind
from compo.rundir import RunDirectory

RAY_CONNECT_TIMEOUT_S = 10.0  # a head that does not accept a TCP connection by then is not there
RAY_DEFAULT_PORT = 6379  # the GCS port of `ray start --head`
RAY_CLIENT_PORT = 10001  # the port of ray:// addresses
NOT_AN_ADDRESS = (None, "", "auto", "local")  # ray.init finds (or starts) the cluster itself


def resumable(path: str) -> RunDirectory:
    """The run directory `--resume` names, if it is one."""
    run_dir = RunDirectory(path)
    if not run_dir.path.is_dir():
        raise RunError(f"--resume {path}: no such directory; give the directory a run wrote "
                       "(runs/<run_id>)")
    if not run_dir.config_path.is_file():
        raise RunError(f"--resume {path}: not a run directory (no config.yaml there); give the "
                       "directory a run wrote (runs/<run_id>), or start a run with --config")
    return run_dir


def check_model_dir(path: str, field: str) -> None:
    """A local model directory with config.json and a tokenizer that loads."""
    from compo.model.loading import load_tokenizer

    where = Path(path)
    if not where.exists():
        raise ModelError(f"{field}={path}: no such directory; point it at a local model "
                         "directory written by save_pretrained (downloads are disabled)")
    if not (where / "config.json").is_file():
        raise ModelError(f"{field}={path}: no model there (no config.json); point it at a "
                         "directory written by save_pretrained")
    try:
        load_tokenizer(where)
    except (OSError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ModelError(f"{field}={path}: its tokenizer does not load ({reason}); save it "
                         "next to the model: tokenizer.save_pretrained(model.path)") from None


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) a Ray address connects to; None for 'auto' and the like."""
    if address in NOT_AN_ADDRESS:
        return None
    if "://" in address:
        parts = urlsplit(address)
        default = RAY_CLIENT_PORT if parts.scheme == "ray" else RAY_DEFAULT_PORT
        return parts.hostname or "127.0.0.1", parts.port or default
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else (address, RAY_DEFAULT_PORT)


def check_ray_address(address: str | None, field: str) -> None:
    """Something accepts connections at the Ray address (ray.init itself retries for
    minutes when nothing does)."""
    endpoint = ray_endpoint(address) if address else None
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise DistributedError(
            f"{field}={address}: no Ray cluster answers there ({error.strerror or error}); "
            "start one (ray start --head) or fix the address") from None


@contextmanager
def captured_stderr() -> Iterator[Callable[[], str]]:
    """File descriptor 2 into a temporary file (Ray's C++ client writes there, not through
    Python); yields a function that reads what was written."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode(errors="replace"))[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def connect_ray(address: str | None, field: str) -> None:
    """Join the Ray cluster at an explicit address now (the Ray side then uses this
    connection), with Ray's own retry noise kept out of the console: a refusal is one line."""
    if address is None or ray_endpoint(address) is None:
        return
    check_ray_address(address, field)
    import ray  # the ray extra

    from compo.cli.errors import ray_refusal

    with captured_stderr() as written:
        try:
            ray.init(address=address)
        except ConnectionError as error:
            raise ray_refusal(error, address, written()) from None


def check_start(config: TrainConfig, where: str, ray_address: str | None,
                use_ray: bool = True) -> None:
    """Everything that can be checked in seconds, before a run directory or a model."""
    check_model_dir(config.model.path, f"{where}: model.path")
    require_path(config.data.path, f"{where}: data.path")
    if use_ray and (ray_address or config.ray is not None):
        field = "--ray-address" if ray_address else f"{where}: ray.address"
        connect_ray(ray_address or (config.ray.address if config.ray else None), field)
    oracle_kind(config.oracle.kind).preflight(config, where)  # e.g. the service reachable
