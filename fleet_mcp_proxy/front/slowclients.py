"""Deadlines uvicorn lacks: a connection must deliver its request line and headers within `header_timeout`, and
then the request's body within `body_timeout`.

uvicorn (0.54) has no request-start or header timeout (Kludex/uvicorn#157), and its keep-alive timer is
cancelled by the first byte, so a client trickling one header byte a second holds a connection (and a
`limit_concurrency` slot) for as long as it likes: slowloris. The same holds for a body trickled after complete
headers (its size is capped by `max_request_body`, its pace was not). These protocol subclasses start a header
timer when a connection opens and whenever a new request begins on a kept-alive one, and a body timer when the
headers are in; either closes the connection when it fires (with 408 if no answer has started).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import ProxyConfig

logger = logging.getLogger(__name__)
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
# Connections the kernel queues before uvicorn accepts them; it caps this at net.core.somaxconn (4096 here).
# asyncio's create_server calls listen() again with uvicorn's `backlog`, so this is where the figure takes hold.
LISTEN_BACKLOG = 65535


class _HeaderTimer:
    """The timers both protocols share: one armed when a request may begin and disarmed when its headers are in,
    one armed when its headers are in and disarmed when its body is."""

    header_timeout = 10.0  # set per server by `header_deadline_protocol`
    body_timeout = 30.0
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def _arm_body(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_expired)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        logger.debug("closing a connection whose request body took over %g s", self.body_timeout)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()  # the app's pending receive() then sees http.disconnect

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _still_in_headers(self) -> bool:
        return True

    def _expired(self) -> None:
        self._header_timer = None
        if self._still_in_headers() and not self.transport.is_closing():
            # Debug only: under a slowloris flood a line per connection would be a flood of its own.
            logger.debug("closing a connection whose request headers took over %g s", self.header_timeout)
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


class HeaderDeadlineProtocol(_HeaderTimer, H11Protocol):
    """uvicorn's h11 protocol with a deadline on the request line and headers of every request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is also a slow client

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # a new request begins on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # headers complete (or the connection failed): the request runs
        self._time_body()

    def _time_body(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            self._arm_body()
        else:
            self._disarm_body()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request already partly buffered starts its clock now.
        if self._header_timer is None and self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm()
        self._time_body()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def _still_in_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE


class HttpToolsHeaderDeadlineProtocol(_HeaderTimer, HttpToolsProtocol):
    """The same deadline on uvicorn's httptools protocol (the C parser: the fast front)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        if self._header_timer is None:
            self._arm()  # the first byte of a new request on a kept-alive connection
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._arm_body()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)


def header_deadline_protocol(
    header_timeout: float, parser: str = "httptools", *, body_timeout: float = 30.0
) -> type[asyncio.Protocol]:
    """The protocol class for one server: uvicorn instantiates it itself, so the deadlines ride on the class.

    httptools (a dependency: its C parser costs the front far less per request than h11) unless `h11` is
    asked for.
    """
    base = HeaderDeadlineProtocol if parser == "h11" else HttpToolsHeaderDeadlineProtocol
    deadlines = {"header_timeout": header_timeout, "body_timeout": body_timeout}
    return type("HeaderDeadlineProtocol", (base,), deadlines)


def uvicorn_config(app: ASGIApp, config: ProxyConfig, **options: Any) -> uvicorn.Config:
    """The one uvicorn configuration the proxy serves with (the CLI and the tests alike)."""
    settings: dict[str, Any] = {
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
        "http": header_deadline_protocol(config.header_timeout, body_timeout=config.body_timeout),
        "limit_concurrency": config.limit_concurrency,  # beyond it: 503 at once, never a hang
        "timeout_keep_alive": config.keep_alive_timeout,
        "backlog": LISTEN_BACKLOG,  # uvicorn's 2,048 overflowed under 4,096 arrivals at once (issue 16)
        **options,
    }
    return uvicorn.Config(app, **settings)
