"""Admission: the one step every request passes, whichever path serves it (the SDK server or the fast lane).

Host and Origin are checked for every route but the health probes, by one ASGI layer in front of the app.
A message is accepted by the SDK's own parser and validator, so the lane can only ever take what the SDK path
would have taken (anything else goes to the SDK path, which words the refusal). The episode comes from the
same slot rule for both paths, and a tool call's place under `max_calls_per_principal` is entered and left in
one `try/finally`: no error between the two can leak a slot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import mcp_types as t
import pydantic_core
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp_types import jsonrpc_message_adapter
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..episode import Episode
from ..registry import Registry
from .identity import RequestIdentity, episode_slot
from .limits import PrincipalLimits

# Orchestrators call the probes by pod address; they reveal nothing per principal and change nothing.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class HostOriginGate:
    """DNS-rebinding protection for every HTTP route (every method) except the probes, before auth or routing."""

    def __init__(self, app: ASGIApp, guard: TransportSecurityMiddleware) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PROBE_PATHS:
            refused = await self.guard.validate_request(Request(scope), is_post=False)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def declared_length_ok(headers: Mapping[str, str], limit: int) -> bool:
    """A body the lane may read whole: its length declared up front and within `max_request_body`."""
    length = headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= limit


def parse_message(body: bytes) -> dict[str, Any] | None:
    """One JSON-RPC message as the SDK path accepts it (same parser, same validator), or None.

    None means the SDK path must answer: a batch, a parse error, a non-scalar or fractional id, a bad envelope.
    """
    try:
        raw = pydantic_core.from_json(body)
        jsonrpc_message_adapter.validate_python(raw, by_name=False)
    except ValueError:  # pydantic's ValidationError is one; so is a JSON error or too deep a nesting
        return None
    return raw if isinstance(raw, dict) else None


def tool_call_params_ok(params: Any) -> bool:
    """Whether the SDK path's `tools/call` handler would get these params (the model it validates them with)."""
    try:
        t.CallToolRequestParams.model_validate({} if params is None else params, by_name=False)
    except ValueError:
        return False
    return True


def is_request_id(value: Any) -> bool:
    """JSON-RPC ids as the SDK types them: a string or an integer (never a bool, a float, a list or an object)."""
    return isinstance(value, str) or type(value) is int


def handshake_episode(registry: Registry, principal: str, key: str | None, session_id: str) -> Episode | None:
    """The live episode of a handshake-era request, by the slot rule the SDK path opens episodes with."""
    slot = episode_slot(RequestIdentity(principal, key, session_id, False), default_episode=False)
    episode = registry.episodes.get(slot)
    if episode is None or episode.principal != principal or session_id not in episode.session_ids:
        return None
    return episode


class CallRefused(Exception):
    """The call limit refused this call; the message is written for the agent and names the config key."""


@contextmanager
def call_slot(limits: PrincipalLimits, principal: str) -> Iterator[None]:
    """Hold one of `principal`'s `max_calls_per_principal` places for the body of the `with`.

    Raises:
        CallRefused: the principal already has as many calls in flight as allowed (nothing was counted).
    """
    refusal = limits.enter_call(principal)
    if refusal is not None:
        raise CallRefused(refusal)
    try:
        yield
    finally:
        limits.exit_call(principal)
