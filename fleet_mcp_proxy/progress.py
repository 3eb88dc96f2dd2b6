"""Progress on one upstream request: the backend's, relayed, and the proxy's own keep-alive beats.

The MCP spec wants the values on a progress token to increase. The proxy's own notifications (while
provisioning, while a backend call is silent) therefore step a hair above the last value sent and carry
their meaning in the message; a backend value that would not increase (only possible right after such a
step) is lifted just above it. Backend values are otherwise passed unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio
from mcp.server import ServerRequestContext

logger = logging.getLogger(__name__)
T = TypeVar("T")
STEP = 0.001  # how far each of the proxy's own notifications moves the value

Ctx = ServerRequestContext[Any, Any]


def wants_progress(ctx: Ctx) -> bool:
    return bool(ctx.meta and ctx.meta.get("progress_token") is not None)


class ProgressSender:
    """Monotonic progress for one request (a 2026-07-28 retry rebinds it to the new request)."""

    __slots__ = ("ctx", "last", "quiet_since", "total")

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.last: float | None = None
        self.total: float | None = None
        self.quiet_since = anyio.current_time()

    async def relay(self, progress: float, total: float | None, message: str | None) -> None:
        """A backend's progress notification."""
        if self.last is not None and progress <= self.last:
            progress = self.last + STEP
        self.total = total
        await self._send(progress, total, message)

    async def own(self, message: str) -> None:
        """The proxy's own notification; best effort (the client may have gone)."""
        value = 0.0 if self.last is None else self.last + STEP
        try:
            await self._send(value, self.total, message)
        except Exception:  # a closed stream: nobody is listening any more
            logger.debug("progress for request %s not delivered", self.ctx.request_id)

    def heard(self) -> None:
        """Something else reached the client on this request (a log message): it is not silent."""
        self.quiet_since = anyio.current_time()

    async def _send(self, progress: float, total: float | None, message: str | None) -> None:
        self.last = progress
        self.quiet_since = anyio.current_time()
        await self.ctx.session.report_progress(progress, total, message)


# The sender a request used while it waited for provisioning, so its tool call continues the same values.
_carried: ContextVar[ProgressSender | None] = ContextVar("fmp_progress_sender", default=None)


def carry(sender: ProgressSender) -> None:
    """Hand `sender` on to the rest of this request (context variables are per handler task)."""
    _carried.set(sender)


def sender_for(ctx: Ctx) -> ProgressSender:
    """This request's sender: the one provisioning used, else a fresh one."""
    carried = _carried.get()
    return carried if carried is not None and carried.ctx is ctx else ProgressSender(ctx)


async def keepalive(call: Awaitable[T], sender: ProgressSender, interval: float, label: str) -> T:
    """Await `call`; whenever the request has been silent for `interval` seconds, send a progress beat.

    Load balancers cut streams that carry nothing for a while; a beat is one small SSE event. Only used
    when the client sent a progress token, so a call without one pays nothing.
    """
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_beat, sender, interval, label)
        try:
            result = await call
        except Exception as exc:  # re-raised below, outside the task group (not as a group)
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


async def _beat(sender: ProgressSender, interval: float, label: str) -> None:
    started = anyio.current_time()
    while True:
        await anyio.sleep_until(sender.quiet_since + interval)
        now = anyio.current_time()
        if now - sender.quiet_since >= interval:
            await sender.own(f"{label}: still running, {now - started:.0f} s")
