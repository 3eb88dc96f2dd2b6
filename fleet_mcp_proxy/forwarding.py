"""The caller side of one forwarded request: progress, logs and relayed requests ride back to it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import anyio
import mcp_types as t
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .chatlog import HANDOVER_META
from .progress import ProgressSender, sender_for, wants_progress
from .roundtrip import PendingCall

_RESERVED_META = "io.modelcontextprotocol/"
_FRONT_ONLY = frozenset({"inputResponses", "requestState", "_meta"})


class Upstream(Protocol):
    """Whoever a backend call is made for: backend traffic with no request of its own rides back to it."""

    async def log(self, params: t.LoggingMessageNotificationParams) -> None: ...

    async def ask(self, request: t.ServerRequest, result_type: type[Any], timeout: float) -> Any: ...


# The upstream a backend call is made for, set in the task that sends it. The SDK's HTTP client transport reads
# each call's response stream in a task that inherits the sender's context and hands what arrives there (the
# backend's requests and logs related to that call) to our callbacks in that context, so they can read it.
_ORIGIN: ContextVar[Upstream | None] = ContextVar("fleet_mcp_proxy_upstream", default=None)


@contextmanager
def on_behalf_of(upstream: Upstream) -> Iterator[None]:
    """Backend traffic caused by calls sent inside this block belongs to `upstream`."""
    token = _ORIGIN.set(upstream)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def origin_among(in_flight: Sequence[Upstream]) -> Upstream | None:
    """The in-flight call a backend request or log belongs to.

    Known (the backend sent it on that call's HTTP response stream): that call. Unknown (a stdio backend, whose
    one pipe carries no relation, or the backend's standalone stream): with one call in flight, it; with several,
    the most recent, a guess within the same episode that at least reaches the agent; with none, None.
    """
    origin = _ORIGIN.get()
    if origin is not None and any(caller is origin for caller in in_flight):
        return origin
    return in_flight[-1] if in_flight else None


class Caller:
    """The upstream request a backend call is made for."""

    __slots__ = ("_ctx", "modern", "pending", "sender", "wants_progress")

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self._ctx = ctx
        self.modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        self.wants_progress = wants_progress(ctx)
        # Only a request with a progress token needs one: it keeps the values monotonic across relays and beats.
        self.sender: ProgressSender | None = sender_for(ctx) if self.wants_progress else None
        self.pending: PendingCall | None = None

    def rebind(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """A 2026-07-28 retry continues the call: progress now rides the new request."""
        self._ctx = ctx
        if self.sender is not None:
            self.sender.ctx = ctx

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.sender is not None:
            await self.sender.relay(progress, total, message)

    async def log(self, params: t.LoggingMessageNotificationParams) -> None:
        if self.sender is not None:
            self.sender.heard()
        await self._ctx.session.send_log_message(
            params.level, params.data, params.logger, related_request_id=self._ctx.request_id
        )

    async def ask(self, request: t.ServerRequest, result_type: type[Any], timeout: float) -> Any:
        """Relay a backend's sampling, elicitation or roots request on this request's stream."""
        if self.modern:
            if self.pending is None:
                raise MCPError(t.INVALID_REQUEST, f"'{request.method}' can only be relayed during a tool call.")
            return await self.pending.ask(request, result_type)
        with anyio.fail_after(timeout):
            return await self._ctx.session.send_request(
                request, result_type, metadata=ServerMessageMetadata(related_request_id=self._ctx.request_id)
            )


def forward_params(raw: Mapping[str, Any] | None, **replace: Any) -> dict[str, Any]:
    """The upstream params as the backend should see them: hop-specific keys dropped, names swapped."""
    raw = raw or {}
    params = {k: v for k, v in raw.items() if k not in _FRONT_ONLY}
    params.update(replace)
    meta = raw.get("_meta")
    if isinstance(meta, Mapping):
        kept = {
            k: v
            for k, v in meta.items()
            if k not in ("progressToken", HANDOVER_META) and not k.startswith(_RESERVED_META)
        }
        if kept:
            params["_meta"] = kept
    return params


def tool_error(text: str) -> dict[str, Any]:
    """A tool result the agent reads as a failure."""
    return {"content": [{"type": "text", "text": text}], "isError": True}
