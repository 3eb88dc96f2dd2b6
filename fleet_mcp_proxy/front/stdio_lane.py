"""The stdio lane: a handshake-era `tools/call` from the stdio client to a stdio environment, forwarded raw.

Through `serve --stdio`, the SDK path runs a server session and a client session per call, each validating,
modelling and re-serializing the message and hopping through several tasks. When nothing but forwarding is needed
(the process's episode provisioned, a backend tool, no progress token, no step limit), the lane writes the call to
the environment's pipe itself with its own id (`fmp-s-N`) and writes the answer back with only the id rewritten
(and the result post-processed as on the SDK path: truncation, recording, tool-error notes, telemetry).
Whether the lane takes a message is decided as the line is read, so nothing it declines is reordered.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as t
from mcp import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .. import telemetry
from ..calls import malformed_message, stopped_message, timeout_message, unreachable_message
from ..catalog import Route
from ..chatlog import HANDOVER_META
from ..episode import Episode
from ..fastlane.stdio import LANE_ID_PREFIX, AnswerSlot, StdioTap
from ..forwarding import forward_params, tool_error
from ..recorder import now
from .admission import CallRefused, call_slot, is_request_id, tool_call_params_ok
from .episodes import StateHolder
from .lane_messages import cancelled, dumps, failed
from .stdio_pipes import LineWriter
from .toolresult import finish_forwarded

logger = logging.getLogger(__name__)
STDIO_EPISODE = "stdio"  # the registry key of the process's episode (front/episodes.py)
_TRANSPORT_ERRORS = frozenset(
    {(t.INTERNAL_ERROR, "Server returned an error response"), (t.INVALID_REQUEST, "Session terminated")}
)


@dataclass(eq=False)
class _Call:
    tap: StdioTap
    backend_id: str
    slot: ExitStack
    request: bytes
    answer: AnswerSlot
    sent: bool = False  # handed to the pipe as the line was read
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass(eq=False)
class _Answer:
    arrived: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] = field(default_factory=dict)


class _LaneUpstream:
    """A lane call as its episode's upstream: what the environment sends during it (logs, sampling, elicitation,
    roots) reaches the client as on the SDK path, on the one stdout."""

    def __init__(self, lane: StdioLane) -> None:
        self._lane = lane

    async def log(self, params: t.LoggingMessageNotificationParams) -> None:
        body = params.model_dump(by_alias=True, exclude_none=True, mode="json")
        await self._lane.out.write(dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": body}) + b"\n")

    async def ask(self, request: t.ServerRequest, result_type: type[Any], timeout: float) -> Any:
        relay_id = f"fmp-r-{next(self._lane.ids)}"
        answer = _Answer()
        self._lane.answers[relay_id] = answer
        try:
            message = request.model_dump(by_alias=True, exclude_none=True, mode="json")
            await self._lane.out.write(dumps({"jsonrpc": "2.0", "id": relay_id, **message}) + b"\n")
            with anyio.fail_after(timeout):
                await answer.arrived.wait()
        finally:
            self._lane.answers.pop(relay_id, None)
        error = answer.message.get("error")
        if isinstance(error, dict):
            raise MCPError(int(error.get("code", t.INTERNAL_ERROR)), str(error.get("message", "")), error.get("data"))
        return result_type.model_validate(answer.message.get("result"))


class StdioLane:
    """Takes what it can of the stdio client's messages; everything else goes on to the SDK server."""

    def __init__(self, holder: StateHolder, out: LineWriter, task_group: anyio.abc.TaskGroup) -> None:
        self._holder = holder
        self.out = out
        self._tg = task_group
        self.ids = itertools.count()
        self.answers: dict[str, _Answer] = {}
        self._calls: dict[str | int, _Call] = {}
        self._initialize_id: Any = None
        self.handshake = False  # the session settled a handshake-era version: the only era the lane serves
        self.served = 0

    # -- the era, read off the initialize exchange --------------------------------------------------------------
    def seen_request(self, raw: dict[str, Any]) -> None:
        if raw.get("method") == "initialize":
            self._initialize_id = raw.get("id")
            self.handshake = False

    def seen_answer(self, message: Any) -> None:
        if self._initialize_id is None or not isinstance(message, t.JSONRPCResponse):
            return
        if message.id == self._initialize_id:
            self._initialize_id = None
            self.handshake = message.result.get("protocolVersion") not in MODERN_PROTOCOL_VERSIONS

    # -- what the lane takes ------------------------------------------------------------------------------------
    def take(self, raw: dict[str, Any]) -> bool:
        """Whether the lane serves this (already validated) message; decided now, served in its own task."""
        method = raw.get("method")
        if method == "tools/call":
            return self.handshake and self._take_call(raw)
        if method == "notifications/cancelled":
            params = raw.get("params") or {}
            cancelled = params.get("requestId") if isinstance(params, dict) else None
            call = self._calls.get(cancelled) if isinstance(cancelled, str | int) and is_request_id(cancelled) else None
            if call is None:
                return False
            call.scope.cancel()
            return True
        if method is None:  # the client's answer to a request the lane relayed
            request_id = raw.get("id")
            answer = self.answers.get(request_id) if isinstance(request_id, str) else None
            if answer is None:
                return False
            answer.message = raw
            answer.arrived.set()
            return True
        return False

    def _take_call(self, raw: dict[str, Any]) -> bool:
        front_id = raw.get("id")
        params = raw.get("params")
        if not is_request_id(front_id) or front_id in self._calls:
            return False
        if not isinstance(params, dict) or not tool_call_params_ok(params):
            return False  # the SDK path refuses it in its own words
        meta = params.get("_meta")
        if isinstance(meta, dict) and (meta.get("progressToken") is not None or HANDOVER_META in meta):
            return False  # progress is re-addressed per hop, a handed-over chat is taken in: the SDK path does both
        state = self._holder.state
        episode = state.registry.episodes.get(STDIO_EPISODE) if state is not None else None
        if state is None or episode is None or state.registry.closing or episode.ended is not None:
            return False
        if not episode.provisioned or episode.outcome.finished or episode.steps.limited:
            return False  # ... and steps are counted on the SDK path only
        route = episode.tools.route(params["name"])
        link = episode.links.get(route.alias) if route is not None and route.alias is not None else None
        tap = link.stdio_tap() if link is not None else None
        if route is None or tap is None:
            return False
        slot = ExitStack()
        try:
            slot.enter_context(call_slot(state.limits, episode.principal))
        except CallRefused:
            return False  # max_calls_per_principal: the SDK path words the refusal
        backend_id = f"{LANE_ID_PREFIX}{next(self.ids)}"
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": backend_id, "method": "tools/call"}
        request["params"] = forward_params(params, name=route.original)
        call = _Call(tap, backend_id, slot, dumps(request), tap.expect(backend_id))
        # Sent now, before the call's task even starts: the environment works while that task is set up.
        call.sent = tap.send_nowait(call.request)
        assert front_id is not None
        self._calls[front_id] = call  # now, so a cancel read next finds it
        self._tg.start_soon(self._serve, call, front_id, params, episode, route)
        return True

    # -- serving one call ---------------------------------------------------------------------------------------
    async def _serve(
        self, call: _Call, front_id: str | int, params: dict[str, Any], episode: Episode, route: Route
    ) -> None:
        assert route.alias is not None
        name: str = params["name"]
        started, clock = now(), anyio.current_time()
        upstream = _LaneUpstream(self)
        upstreams = episode.callers.setdefault(route.alias, [])
        upstreams.append(upstream)
        try:
            with call.slot, episode.busy():
                answer = await self._exchange(call, episode, route.alias, name)
        finally:
            upstreams.remove(upstream)
            self._calls.pop(front_id, None)
        self.served += 1
        if answer is None:
            return  # cancelled by the client: as on the SDK path, a cancelled request is never answered
        result = answer.get("result")
        if telemetry.ON:
            telemetry.tool_call(episode.id, route.alias, name, result, clock)
        if result is not None:
            result = finish_forwarded(episode, name, params.get("arguments"), result, started, clock)
            await self.out.write(dumps({"jsonrpc": "2.0", "id": front_id, "result": result}) + b"\n")
        else:
            await self.out.write(dumps({"jsonrpc": "2.0", "id": front_id, "error": answer["error"]}) + b"\n")

    async def _exchange(self, call: _Call, episode: Episode, alias: str, exposed: str) -> dict[str, Any] | None:
        """`{"result": ...}` or `{"error": ...}` as the SDK path would answer; None when the client cancelled."""
        timeout = episode.environments[alias].call_timeout
        slot = call.answer
        answer: dict[str, Any] | None = None
        with call.scope:
            try:
                with anyio.fail_after(timeout):
                    if call.sent:
                        await call.tap.drain()
                    else:
                        await call.tap.send(call.request)
                    await slot.arrived.wait()
                answer = _answer(slot.message, alias, exposed, timeout)
            except TimeoutError:
                await _notify(call.tap, cancelled(call.backend_id, "timed out"))
                failed("timeout")
                return {"result": tool_error(timeout_message(exposed, timeout))}
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                failed("transport_error")
                return {"result": tool_error(stopped_message(alias, exposed))}
            finally:
                call.tap.forget(call.backend_id)
        if call.scope.cancelled_caught:
            await _notify(call.tap, cancelled(call.backend_id, "cancelled by the client"))
            return None
        return answer


def _answer(message: dict[str, Any] | None, alias: str, exposed: str, timeout: float) -> dict[str, Any]:
    """The environment's answer as the SDK path passes it on (calls.py maps the same errors to tool results)."""
    if message is None:
        failed("transport_error")
        return {"result": tool_error(stopped_message(alias, exposed))}
    result, error = message.get("result"), message.get("error")
    if isinstance(result, dict) and message.get("jsonrpc") == "2.0":
        return {"result": result}
    if not isinstance(error, dict) or type(error.get("code")) is not int or not isinstance(error.get("message"), str):
        logger.warning("environment %s answered a tool call with a malformed message", alias)
        failed("transport_error")
        return {"result": tool_error(malformed_message(alias, exposed))}
    code, text = error["code"], error["message"]
    if code == t.REQUEST_TIMEOUT:
        failed("timeout")
        return {"result": tool_error(timeout_message(exposed, timeout))}
    if (code, text) in _TRANSPORT_ERRORS:
        failed("transport_error")
        return {"result": tool_error(unreachable_message(alias, exposed))}
    if code == t.CONNECTION_CLOSED:
        failed("transport_error")
        return {"result": tool_error(stopped_message(alias, exposed))}
    if code == t.PARSE_ERROR:
        failed("transport_error")
        return {"result": tool_error(malformed_message(alias, exposed))}
    failed("protocol_error")
    kept = {"code": code, "message": text}
    if error.get("data") is not None:
        kept["data"] = error["data"]
    return {"error": kept}


async def _notify(tap: StdioTap, message: dict[str, Any]) -> None:
    """Tell the environment: best effort, shielded and bounded."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        try:
            await tap.send(dumps(message))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            logger.info("could not deliver %s to an environment", message.get("method"))
