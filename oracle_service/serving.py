"""How `serve` runs the app under uvicorn: log handlers that redact secrets and leave query
strings out of the access log, and deadlines on reading each request.

uvicorn closes idle keep-alive connections, but not a client that connects and then sends
its headers (or its body) a byte at a time, or never: each would hold a connection and a
little memory forever. TimedH11Protocol gives each request `request_header_timeout_s` for
its headers and `request_body_timeout_s` for its body, then closes the connection.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from oracle_service.core.settings import Settings

QUERY_SHOWN = "?[redacted]"  # what the access log shows of a query string
_ACCESS_PATH = 2  # the access log record's arguments: client, method, path, version, status
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_SERVICE_FORMAT = "%(levelprefix)s %(name)s: %(message)s"


class AccessLogFilter(logging.Filter):
    """Drops the query string from uvicorn's access log lines (a token sent in a URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > _ACCESS_PATH and isinstance(
            args[_ACCESS_PATH], str
        ):
            path, query, _ = args[_ACCESS_PATH].partition("?")
            shown = path + QUERY_SHOWN if query else path
            record.args = (*args[:_ACCESS_PATH], shown, *args[_ACCESS_PATH + 1 :])
        return True


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with every handler redacting secrets (core/sanitize.py), query
    strings out of the access log, and the service's own loggers on stderr by name."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "redact": {"()": "oracle_service.core.sanitize.RedactingFilter"},
        "no_query": {"()": "oracle_service.serving.AccessLogFilter"},
    }
    config["formatters"]["service"] = {**config["formatters"]["default"], "fmt": _SERVICE_FORMAT}
    config["handlers"]["service"] = {**config["handlers"]["default"], "formatter": "service"}
    for name, handler in config["handlers"].items():
        handler["filters"] = ["no_query", "redact"] if name == "access" else ["redact"]
    config["root"] = {"handlers": ["service"], "level": level.upper()}
    return config


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for what the client must send: the headers,
    from the connection (or the first byte after a keep-alive pause); then the body."""

    def __init__(self, config: ServerConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._timeouts = {
            h11.IDLE: ("headers", "request_header_timeout_s", config.header_timeout_s),
            h11.SEND_BODY: ("body", "request_body_timeout_s", config.body_timeout_s),
        }
        self._deadline: asyncio.TimerHandle | None = None
        self._timed: type[h11.IDLE] | None = None  # the client state being timed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Start, keep or stop the deadline for what the client has to send now."""
        state = self.conn.their_state
        waiting = state is h11.SEND_BODY or (
            state is h11.IDLE and self.timeout_keep_alive_task is None  # else: keep-alive's
        )
        timed = state if waiting and not self.transport.is_closing() else None
        if timed is self._timed:
            return  # the same wait: its deadline keeps running
        self._stop()
        if timed is not None:
            self._timed = timed
            timeout = self._timeouts[timed][2]
            self._deadline = self.loop.call_later(timeout, self._too_slow, timed)

    def _stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._timed = None, None

    def _too_slow(self, state: type[h11.IDLE]) -> None:
        self._deadline, self._timed = None, None
        if self.conn.their_state is not state or self.transport.is_closing():
            return
        part, name, timeout = self._timeouts[state]
        self.logger.info("closed a connection: no complete request %s within %s=%s s",
                         part, name, timeout)  # fmt: skip
        if state is h11.IDLE and self.conn.trailing_data[0]:  # part of a request came
            self.transport.write(TIMED_OUT)
        self.transport.close()


class ServerConfig(uvicorn.Config):
    """uvicorn's settings plus the request read deadlines (TimedH11Protocol)."""

    def __init__(self, app: Any, header_timeout_s: float, body_timeout_s: float,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(app, http=TimedH11Protocol, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s


def server_config(app: Any, settings: Settings) -> ServerConfig:
    """What `serve` runs: logging is configured already (log_config), not by uvicorn."""
    return ServerConfig(
        app,
        header_timeout_s=settings.request_header_timeout_s,
        body_timeout_s=settings.request_body_timeout_s,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
