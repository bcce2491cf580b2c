"""How the coordinator reaches its actors: a call returns a handle, handles are waited on
and read, values are put once for many calls. RayTransport does it with Ray; InProcess
runs each call at once on a plain object (workers/worker.py, workers/body.py or a fake),
so the coordinator runs in tests and benchmarks without a cluster.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in Ray's error text
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b")  # "ValueError: ..."


def failure_reason(error: Exception) -> str:
    """The original exception of a Ray error ('ModelError: ...'), from its last raise on."""
    lines = [ANSI.sub("", line).strip() for line in str(error).splitlines() if line.strip()]
    raised = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    return " ".join(lines[raised[-1] if raised else -1:]) if lines else type(error).__name__


class Pool(Protocol):
    """The worker actors of one run, as started."""

    actors: list[Any]

    def wait_loaded(self, timeout_s: float, model_path: str) -> list[dict]:
        """What every worker says of itself (describe()) once it has loaded."""

    def shutdown(self) -> None:
        """Stop the actors and give their resources back."""


class Transport(Protocol):
    """Calls, waits, reads and puts; the exception classes its reads raise."""

    Failed: type[Exception]  # any failed call (the others are subclasses)
    Died: type[Exception]  # the actor died (Ray may restart it)
    Restarting: type[Exception]  # the actor is being restarted: try again later
    Timeout: type[Exception]  # a read waited longer than its timeout

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        """Start actor.method(*args); returns its handle."""

    def wait(self, handles: Sequence[Any], timeout: float) -> list:
        """The finished handles among `handles`: every one finished now, or else the
        first to finish within `timeout` seconds (none after it)."""

    def get(self, handle: Any, timeout: float | None = None) -> Any:
        """The call's value, or its failure raised."""

    def put(self, value: Any) -> Any:
        """A handle of `value`, passed to calls in its place (sent once)."""

    def alive_nodes(self) -> set[str]:
        """Ids of the nodes that are alive."""

    def kill(self, actor: Any) -> None:
        """Stop the actor for good (no restart): the run is over for it."""


class RayTransport:
    """The transport of a Ray cluster (ray.init() done by the caller)."""

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self.Failed, self.Died = ray.exceptions.RayError, ray.exceptions.RayActorError
        self.Restarting = ray.exceptions.ActorUnavailableError
        self.Timeout = ray.exceptions.GetTimeoutError

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        return getattr(actor, method).remote(*args)

    def wait(self, handles: Sequence[Any], timeout: float) -> list:
        handles = list(handles)
        ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        if not ready:  # block for the first one only
            ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def get(self, handle: Any, timeout: float | None = None) -> Any:
        return self.ray.get(handle, timeout=timeout)

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def alive_nodes(self) -> set[str]:
        return {node["NodeID"] for node in self.ray.nodes() if node.get("Alive")}

    def kill(self, actor: Any) -> None:
        self.ray.kill(actor, no_restart=True)


class CallFailed(Exception):
    """A call of the in-process transport raised (its message is the original's)."""


class ActorDied(CallFailed):
    """The in-process actor was marked dead."""


class ActorRestarting(ActorDied):
    """Not raised in process (actors never restart here); the Restarting class."""


class ReadTimeout(CallFailed):
    """Not raised in process (every call has finished when it returns)."""


@dataclass(eq=False)
class Done:
    """The handle of a finished in-process call: its value or its failure."""

    value: Any = None
    error: Exception | None = None


class InProcess:
    """Each call runs at once in this process; a put is the value itself. `dead`: actors
    whose calls fail as a dead actor's would (a test kills one by adding it)."""

    Failed, Died, Restarting, Timeout = CallFailed, ActorDied, ActorRestarting, ReadTimeout

    def __init__(self, node: str = "local") -> None:
        self.node, self.dead, self.calls = node, set(), 0
        self.actor_seconds = 0.0  # CPU spent inside the actors' methods (not the caller's)

    def call(self, actor: Any, method: str, *args: Any) -> Done:
        self.calls += 1
        if id(actor) in self.dead:
            return Done(error=ActorDied(f"{method}: the actor died"))
        started = time.process_time()
        try:
            values = [a.value if type(a) is Done else a for a in args]  # a put: its value
            return Done(getattr(actor, method)(*values))
        except Exception as error:  # a failed call is a value, read as a failure
            return Done(error=CallFailed(f"{type(error).__name__}: {error}"))
        finally:
            self.actor_seconds += time.process_time() - started

    def wait(self, handles: Sequence[Any], timeout: float) -> list:
        return list(handles)  # every call has finished

    def get(self, handle: Done, timeout: float | None = None) -> Any:
        if handle.error is not None:
            raise handle.error
        return handle.value

    def put(self, value: Any) -> Done:
        return Done(value)

    def alive_nodes(self) -> set[str]:
        return {self.node}

    def kill(self, actor: Any) -> None:
        self.dead.add(id(actor))  # its later calls fail as a dead actor's


@dataclass
class LocalPool:
    """Plain worker objects in this process (the in-process transport's actors)."""

    actors: list[Any]

    def wait_loaded(self, timeout_s: float, model_path: str) -> list[dict]:
        return [{"node_id": "local", **actor.describe()} for actor in self.actors]

    def shutdown(self) -> None:
        self.actors = []


@dataclass
class Placement:
    """What a coordinator drives: its transport, the workers' pool, the body (likelihood
    oracle: a workers/body_handle.py RemoteBody; None for the service oracle)."""

    transport: Transport
    pool: Pool
    body: Any = None
    use_gpu: bool = False
