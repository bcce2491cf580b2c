"""The coordinator's handle of the body actor (likelihood oracle): the head part it gives
the workers, one feed per round, and its restarts."""

from __future__ import annotations

import logging
import time
from typing import Any

from compo.config import RayConfig
from compo.errors import DistributedError
from compo.oracle import HeadFeed
from workers.protocol import PairIds
from workers.transport import Transport, failure_reason

log = logging.getLogger(__name__)


class RemoteBody:
    """Calls to the body actor; a call that fails while Ray restarts it is sent again
    (ray.max_restarts times), any other failure stops the run naming the body."""

    def __init__(self, actor: Any, settings: RayConfig, transport: Transport):
        self.actor, self.settings, self.transport = actor, settings, transport
        self.head_ref = transport.call(actor, "head_part")  # the workers wait for it
        self.loading, self.node = transport.call(actor, "describe"), "its node"
        self.passes = 0

    def wait_loaded(self, model_path: str) -> dict:
        """What the body says of itself once it has loaded the model."""
        try:
            info = self.transport.get(self.loading, self.settings.load_timeout_s)
        except self.transport.Timeout:
            raise DistributedError(f"the body: model {model_path} not loaded within "
                                   f"{self.settings.load_timeout_s:g} s (ray.load_timeout_s)"
                                   ) from None
        except self.transport.Failed as error:
            raise DistributedError(f"the body could not load the model {model_path}: "
                                   f"{failure_reason(error)}") from None
        self.node = info["node"]
        return info

    def feed(self, pairs: list[PairIds]) -> HeadFeed:
        """The round's feed: the body runs once for the pairs (again after a restart;
        while Ray restarts it, the call is sent again every ray.poll_interval_s)."""
        attempt, deadline = 0, time.monotonic() + self.settings.load_timeout_s
        while True:
            try:
                feed = self.transport.get(self.transport.call(self.actor, "feed", pairs),
                                          self.settings.load_timeout_s)  # a restart reloads
            except self.transport.Timeout:
                raise DistributedError(
                    f"the body on {self.node} did not run the iteration's pairs within "
                    f"{self.settings.load_timeout_s:g} s (ray.load_timeout_s)") from None
            except self.transport.Restarting as error:
                if time.monotonic() > deadline:
                    raise DistributedError(f"the body on {self.node} did not come back within "
                                           f"{self.settings.load_timeout_s:g} s "
                                           f"(ray.load_timeout_s): {failure_reason(error)}"
                                           ) from None
                time.sleep(self.settings.poll_interval_s)  # Ray is restarting it
                continue
            except self.transport.Died as error:
                attempt += 1
                if attempt > self.settings.max_restarts:
                    raise DistributedError(f"the body on {self.node} failed {attempt} times "
                                           f"(ray.max_restarts): {failure_reason(error)}"
                                           ) from None
                log.warning("the body on %s failed (%s); sending the pairs again", self.node,
                            failure_reason(error))
                continue
            except self.transport.Failed as error:
                raise DistributedError(f"the body on {self.node}: {failure_reason(error)}"
                                       ) from None
            self.passes += 1
            return feed

    def shutdown(self) -> None:
        """Stop the body for good (the run is over)."""
        self.transport.kill(self.actor)
