"""Forwarding one `tools/call` to its backend, in either protocol era, with failures written for the agent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as t
from mcp import MCPError
from mcp.server import ServerRequestContext

from . import telemetry
from .backends import BackendGone, BackendLink
from .catalog import Route
from .episode import Episode
from .forwarding import Caller, forward_params, on_behalf_of, tool_error
from .progress import keepalive
from .roundtrip import PendingCall

# What the SDK's HTTP client reports when the backend answered an HTTP error instead of JSON-RPC: the
# environment's server is unreachable or gone, which is not the backend's own answer to forward.
_TRANSPORT_ERRORS = frozenset(
    {(t.INTERNAL_ERROR, "Server returned an error response"), (t.INVALID_REQUEST, "Session terminated")}
)


def _outcome_error(exc: Exception, exposed: str, alias: str, timeout: float) -> dict[str, Any]:
    """Map a failed backend call to a tool error, or re-raise what the backend itself answered."""
    if telemetry.ON:
        telemetry.note_call_failure(_failure_kind(exc))
    if isinstance(exc, BackendGone):
        return tool_error(str(exc))
    if isinstance(exc, MCPError) and exc.code == t.REQUEST_TIMEOUT:
        return tool_error(timeout_message(exposed, timeout))
    if isinstance(exc, MCPError) and (exc.code, exc.message) in _TRANSPORT_ERRORS:
        return tool_error(unreachable_message(alias, exposed))
    if isinstance(exc, MCPError) and exc.code == t.CONNECTION_CLOSED:
        return tool_error(stopped_message(alias, exposed))
    if isinstance(exc, MCPError) and exc.code == t.PARSE_ERROR:  # our client could not parse the backend's answer
        return tool_error(malformed_message(alias, exposed))
    raise exc


def timeout_message(exposed: str, timeout: float) -> str:
    return (
        f"The tool '{exposed}' did not finish within {timeout:g} s; it was cancelled, "
        "and whether it took effect is unknown."
    )


def unreachable_message(alias: str, exposed: str) -> str:
    return (
        f"The environment '{alias}' could not be reached while running '{exposed}'; "
        "the outcome of this call is unknown."
    )


def malformed_message(alias: str, exposed: str) -> str:
    return (
        f"The environment '{alias}' answered '{exposed}' with a malformed message; the outcome of this call is unknown."
    )


def stopped_message(alias: str, exposed: str) -> str:
    return f"The environment '{alias}' stopped while running '{exposed}'; the outcome of this call is unknown."


def _failure_kind(exc: Exception) -> str:
    if isinstance(exc, MCPError) and exc.code == t.REQUEST_TIMEOUT:
        return "timeout"
    if (
        isinstance(exc, MCPError)
        and exc.code not in (t.CONNECTION_CLOSED, t.PARSE_ERROR)
        and (exc.code, exc.message) not in _TRANSPORT_ERRORS
    ):
        return "protocol_error"  # the backend's own answer, re-raised to the client
    return "transport_error"


async def _tracked_call(episode: Episode, alias: str, caller: Caller, link: BackendLink, params: dict[str, Any]) -> Any:
    callers = episode.callers.setdefault(alias, [])
    callers.append(caller)
    try:
        with episode.busy(), on_behalf_of(caller):
            call = link.request(
                "tools/call",
                params,
                timeout=episode.environments[alias].call_timeout,
                on_progress=caller.progress if caller.wants_progress else None,
            )
            if caller.sender is not None and episode.keepalive_interval > 0:
                # Only with a progress token: beats keep an idle-timing load balancer from cutting a silent call.
                return await keepalive(call, caller.sender, episode.keepalive_interval, f"{alias}: {params['name']}")
            return await call
    finally:
        callers.remove(caller)


async def forward_tool_call(
    ctx: ServerRequestContext[Any, Any], episode: Episode, route: Route, exposed: str
) -> dict[str, Any]:
    """The backend's result, verbatim; or an `isError` result when the call could not complete."""
    assert route.alias is not None
    alias = route.alias
    timeout = episode.environments[alias].call_timeout
    caller = Caller(ctx)
    if caller.modern:
        return await _forward_modern(ctx, episode, route, exposed, caller)
    try:
        link = episode.link(alias)
        result: dict[str, Any] = await _tracked_call(
            episode, alias, caller, link, forward_params(ctx.params, name=route.original)
        )
        return result
    except (BackendGone, MCPError) as exc:
        return _outcome_error(exc, exposed, alias, timeout)


async def _run_pending(episode: Episode, pending: PendingCall, call: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    try:
        await pending.run(call)
    finally:
        # A waiting handler holds the call itself; the token expires with the call. A client that stopped
        # answering an input request ends the call at the call timeout, and nothing of it stays behind.
        episode.pending.pop(pending.token, None)


async def _forward_modern(
    ctx: ServerRequestContext[Any, Any], episode: Episode, route: Route, exposed: str, caller: Caller
) -> dict[str, Any]:
    assert route.alias is not None
    alias = route.alias
    timeout = episode.environments[alias].call_timeout
    raw = ctx.params or {}
    token = raw.get("requestState")
    if isinstance(token, str):
        pending = episode.pending.get(token)
        if pending is None:
            raise MCPError(t.INVALID_PARAMS, "Unknown or expired requestState.")
        pending.caller.rebind(ctx)
        pending.answer(raw.get("inputResponses"))
    else:
        try:
            link = episode.link(alias)
        except BackendGone as exc:
            return tool_error(str(exc))
        pending = PendingCall(episode.id, timeout, caller)
        caller.pending = pending
        episode.pending[pending.token] = pending
        params = forward_params(raw, name=route.original)
        episode.task_group.start_soon(
            _run_pending, episode, pending, lambda: _tracked_call(episode, alias, caller, link, params)
        )
    try:
        result = await pending.next()
    except anyio.get_cancelled_exc_class():
        pending.scope.cancel()  # the client closed its request: cancel the backend call too
        episode.pending.pop(pending.token, None)
        raise
    except (BackendGone, MCPError) as exc:
        episode.pending.pop(pending.token, None)
        return _outcome_error(exc, exposed, alias, timeout)
    if result.get("resultType") != "input_required":
        episode.pending.pop(pending.token, None)
    return result
