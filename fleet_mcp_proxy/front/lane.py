"""The tool-call fast lane: a handshake-era `tools/call` from an HTTP client to an HTTP backend, forwarded raw.

The SDK path validates, models and re-serializes every message twice and hops through several tasks and
memory streams on each side; on two cores that is most of a call's cost. When nothing but forwarding is
needed (a bound, provisioned episode, a backend tool, no progress token), the lane posts the call to the
backend's existing session itself and hands the answer back with only the id and the result rewritten.
Whatever the lane does not take goes to the SDK path untouched, so it only ever makes calls cheaper.
"""

from __future__ import annotations

import itertools
import json
import logging
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as t
from mcp import MCPError
from mcp.server.streamable_http import REQUEST_CANCELLED
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Receive, Send

from .. import telemetry
from ..backends import NOTIFICATION
from ..calls import malformed_message, stopped_message, timeout_message, unreachable_message
from ..catalog import Route
from ..chatlog import HANDOVER_META
from ..episode import Episode
from ..fastlane.http1 import Http1Response, LaneError
from ..fastlane.sse import SseDecoder, encode_event
from ..fastlane.target import LaneTarget
from ..forwarding import forward_params, tool_error
from ..recorder import now
from .admission import (
    CallRefused,
    call_slot,
    declared_length_ok,
    handshake_episode,
    is_request_id,
    parse_message,
    tool_call_params_ok,
)
from .auth import current_principal
from .episodes import StateHolder
from .lane_messages import cancelled, dumps, failed, replay
from .toolresult import finish_forwarded

logger = logging.getLogger(__name__)
_NOT_ACCEPTED = frozenset({502, 503})  # never reached the backend; a 504 may have (see transport.py)
_PASS_THROUGH = frozenset({"notifications/message", "notifications/progress"})
_DRAIN_AFTER_ANSWER = 2.0


@dataclass(eq=False)
class _Call:
    target: LaneTarget
    backend_id: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    relays: list[tuple[str, Any]] = field(default_factory=list)


class _FrontWriter:
    """The answer to the client: plain JSON when the backend sent only the result, else an SSE stream."""

    def __init__(self, send: Send, session_id: str) -> None:
        self._send = send
        self._session = session_id.encode("ascii")
        self.streaming = False
        self._lock = anyio.Lock()  # backend traffic relayed from other tasks shares this response

    async def _start(self, content_type: bytes, length: int | None = None) -> None:
        headers = [(b"content-type", content_type), (b"mcp-session-id", self._session)]
        if length is not None:
            headers.append((b"content-length", str(length).encode("ascii")))
        else:
            headers.append((b"cache-control", b"no-cache, no-transform"))
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def event(self, data: bytes) -> None:
        async with self._lock:
            if not self.streaming:
                self.streaming = True
                await self._start(b"text/event-stream")
            await self._send({"type": "http.response.body", "body": encode_event(data), "more_body": True})

    async def finish(self, data: bytes | None) -> None:
        async with self._lock:
            await self._finish(data)

    async def _finish(self, data: bytes | None) -> None:
        if self.streaming:
            await self._send({"type": "http.response.body", "body": encode_event(data) if data else b""})
        elif data is not None:
            await self._start(b"application/json", len(data))
            await self._send({"type": "http.response.body", "body": data})
        else:  # cancelled before anything was sent: end the exchange with an empty stream, as the SDK does
            await self._start(b"text/event-stream")
            await self._send({"type": "http.response.body", "body": b""})


@dataclass(eq=False)
class _Answer:
    arrived: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] = field(default_factory=dict)


class _LaneUpstream:
    """The lane's call as the episode's upstream: backend logs and requests with no stream of their own
    (sent on the backend's GET stream during the call) ride back on this call's response, as on the SDK path."""

    def __init__(self, lane: FastLane, writer: _FrontWriter, sid: str) -> None:
        self._lane = lane
        self._writer = writer
        self._sid = sid

    async def log(self, params: t.LoggingMessageNotificationParams) -> None:
        body = params.model_dump(by_alias=True, exclude_none=True, mode="json")
        await self._writer.event(dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": body}))

    async def ask(self, request: t.ServerRequest, result_type: type[Any], timeout: float) -> Any:
        relay_id = f"fmp-r-{next(self._lane._ids)}"
        answer = _Answer()
        self._lane._answers[(self._sid, relay_id)] = answer
        try:
            message = request.model_dump(by_alias=True, exclude_none=True, mode="json")
            await self._writer.event(dumps({"jsonrpc": "2.0", "id": relay_id, **message}))
            with anyio.fail_after(timeout):
                await answer.arrived.wait()
        finally:
            self._lane._answers.pop((self._sid, relay_id), None)
        error = answer.message.get("error")
        if isinstance(error, dict):
            raise MCPError(int(error.get("code", t.INTERNAL_ERROR)), str(error.get("message", "")), error.get("data"))
        return result_type.model_validate(answer.message.get("result"))


async def _accepted(send: Send) -> None:
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


@contextmanager
def _holding(transport: Any) -> Any:
    """Hold the SDK transport session open while the lane serves it, as its own requests do.

    Private members of mcp 2.3.0's `StreamableHTTPServerTransport` (pinned by tests/test_quality.py).
    """
    transport._requests_in_flight += 1
    scope = transport.idle_scope
    if scope is not None:
        scope.deadline = float("inf")
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if scope is not None and not transport._requests_in_flight and transport._idle_timeout is not None:
            scope.deadline = anyio.current_time() + transport._idle_timeout


class FastLane:
    """Serves what it can of `POST /mcp`; returns everything else to the SDK path."""

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        holder: StateHolder,
        security: TransportSecurityMiddleware,
        *,
        body_limit: int,
    ) -> None:
        self._manager = manager
        self._holder = holder
        self._security = security
        self._body_limit = body_limit
        self._ids = itertools.count()
        self._calls: dict[tuple[str, Any], _Call] = {}
        self._relays: dict[tuple[str, Any], tuple[LaneTarget, Any]] = {}
        self._answers: dict[tuple[str, Any], _Answer] = {}
        self.served = 0

    async def serve(
        self, request: Request, receive: Receive, send: Send, key: str | None, session_id: str
    ) -> Receive | None:
        """None when the lane answered the request; otherwise the `receive` to give the SDK path."""
        state = self._holder.state
        headers = request.headers
        version = headers.get("mcp-protocol-version")
        if state is None or version is None or version in MODERN_PROTOCOL_VERSIONS or state.registry.closing:
            return receive
        if not declared_length_ok(headers, self._body_limit):
            return receive
        accept = headers.get("accept", "")
        if "application/json" not in accept or "text/event-stream" not in accept:
            return receive  # the SDK path answers 406
        if await self._security.validate_request(request, is_post=True) is not None:
            return receive  # Content-Type refused: the SDK path says so
        episode = handshake_episode(state.registry, current_principal(), key, session_id)
        transport = getattr(self._manager, "_server_instances", {}).get(session_id)
        if episode is None or transport is None or transport.is_terminated:
            return receive
        if episode.ended is not None or not episode.provisioned:
            return receive
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left while sending: there is no one to answer
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        raw = bytes(body)
        parsed = parse_message(raw)
        handled = False
        if parsed is not None:
            handled = await self._dispatch(parsed, episode, transport, send, session_id)
        return None if handled else replay(raw, receive)

    async def _dispatch(self, request: dict[str, Any], episode: Episode, transport: Any, send: Send, sid: str) -> bool:
        method = request.get("method")
        if method == "tools/call" and is_request_id(request.get("id")):  # `"id": null` is a notification
            return await self._call(request, episode, transport, send, sid)
        if method == "notifications/cancelled":
            params = request.get("params") or {}
            cancelled = params.get("requestId")
            call = self._calls.get((sid, cancelled)) if is_request_id(cancelled) else None
            if call is None:
                return False
            call.scope.cancel()
            await _accepted(send)
            return True
        if method is None and is_request_id(request.get("id")):  # the answer to a request relayed on the lane
            answer = self._answers.get((sid, request["id"]))
            if answer is not None:
                answer.message = request
                answer.arrived.set()
                await _accepted(send)
                return True
            relay = self._relays.pop((sid, request["id"]), None)
            if relay is None:
                return False
            target, backend_id = relay
            await self._notify(target, {**request, "id": backend_id})
            await _accepted(send)
            return True
        return False

    async def _call(self, request: dict[str, Any], episode: Episode, transport: Any, send: Send, sid: str) -> bool:
        params = request.get("params")
        if not isinstance(params, dict) or not tool_call_params_ok(params):
            return False  # the SDK path refuses it in its own words
        meta = params.get("_meta")
        if isinstance(meta, dict) and (meta.get("progressToken") is not None or HANDOVER_META in meta):
            return False  # progress is re-addressed per hop, a handed-over chat is taken in: the SDK path does both
        name: str = params["name"]
        route = episode.tools.route(name)
        state = self._holder.state
        if route is None or route.alias is None or episode.outcome.finished or state is None or episode.steps.limited:
            return False  # ... and steps are counted on the SDK path only
        link = episode.links.get(route.alias)
        target = link.lane_target(route.original) if link is not None else None
        if target is None:
            return False
        front_id = request["id"]
        writer = _FrontWriter(send, sid)
        started, clock = now(), anyio.current_time()
        try:
            with call_slot(state.limits, episode.principal):
                call = _Call(target, f"fmp-{next(self._ids)}")
                answer = await self._tracked(call, front_id, episode, transport, route, name, params, writer, sid)
        except CallRefused:
            return False  # max_calls_per_principal: the SDK path words the refusal
        if answer is _FALLBACK:
            return False
        self.served += 1
        if answer is None:  # the client cancelled: the 2025-era transport still ends the request's stream
            error = {"code": REQUEST_CANCELLED, "message": "Request cancelled"}
            await writer.finish(dumps({"jsonrpc": "2.0", "id": front_id, "error": error}))
            return True
        result = answer.get("result")
        if telemetry.ON:
            telemetry.tool_call(episode.id, route.alias, name, result, clock)
        if result is not None:
            result = finish_forwarded(episode, name, params.get("arguments"), result, started, clock)
            await writer.finish(dumps({"jsonrpc": "2.0", "id": front_id, "result": result}))
        else:
            await writer.finish(dumps({"jsonrpc": "2.0", "id": front_id, "error": answer["error"]}))
        return True

    async def _tracked(
        self,
        call: _Call,
        front_id: str | int,
        episode: Episode,
        transport: Any,
        route: Route,
        name: str,
        params: dict[str, Any],
        writer: _FrontWriter,
        sid: str,
    ) -> Any:
        """The exchange, registered for cancels and relays while it runs; every registration undone after."""
        assert route.alias is not None
        upstream = _LaneUpstream(self, writer, sid)
        upstreams = episode.callers.setdefault(route.alias, [])
        self._calls[(sid, front_id)] = call
        upstreams.append(upstream)
        try:
            with episode.busy(), _holding(transport):
                return await self._exchange(call, episode, route.alias, name, params, route.original, writer, sid)
        finally:
            upstreams.remove(upstream)
            self._calls.pop((sid, front_id), None)
            for relay in call.relays:
                self._relays.pop(relay, None)

    async def _exchange(
        self,
        call: _Call,
        episode: Episode,
        alias: str,
        exposed: str,
        params: dict[str, Any],
        original: str,
        writer: _FrontWriter,
        sid: str,
    ) -> Any:
        """`{"result": ...}`, `{"error": ...}`, None when cancelled by the client, or _FALLBACK."""
        timeout = episode.environments[alias].call_timeout
        body = dumps(
            {
                "jsonrpc": "2.0",
                "id": call.backend_id,
                "method": "tools/call",
                "params": forward_params(params, name=original),
            }
        )
        answer: Any = None
        with call.scope:
            try:
                with anyio.fail_after(timeout):
                    response = await call.target.pool.post(call.target.headers, body)
                    answer = await self._read(response, call, episode, alias, exposed, writer, sid)
            except TimeoutError:
                await self._notify(call.target, cancelled(call.backend_id, "timed out"))
                failed("timeout")
                return {"result": tool_error(timeout_message(exposed, timeout))}
            except LaneError as exc:
                if not exc.sent and not writer.streaming:
                    return _FALLBACK
                failed("transport_error")
                return {"result": tool_error(unreachable_message(alias, exposed))}
            except ValueError:  # not JSON: the environment broke the protocol
                logger.warning("environment %s answered a tool call with malformed JSON", alias)
                failed("transport_error")
                return {"result": tool_error(malformed_message(alias, exposed))}
        if call.scope.cancelled_caught:
            await self._notify(call.target, cancelled(call.backend_id, "cancelled by the client"))
            return None
        return answer

    async def _read(
        self,
        response: Http1Response,
        call: _Call,
        episode: Episode,
        alias: str,
        exposed: str,
        writer: _FrontWriter,
        sid: str,
    ) -> Any:
        if response.status in _NOT_ACCEPTED:
            await response.release()  # the backend never took it: the SDK path retries within its budget
            return _FALLBACK
        if response.status != 200:
            await response.release()
            return {"result": tool_error(unreachable_message(alias, exposed))}
        if response.headers.get(b"content-type", b"").startswith(b"application/json"):
            return _answer(json.loads(await response.read()))
        decoder = SseDecoder()
        answer: Any = None
        async with aclosing(response.chunks()) as chunks:
            async for chunk in chunks:
                for data in decoder.feed(chunk):
                    message = json.loads(data)
                    if not isinstance(message, dict):
                        continue
                    if "method" not in message and message.get("id") == call.backend_id:
                        answer = _answer(message)
                        break
                    await self._interim(message, data, call, episode, alias, writer, sid)
                if answer is not None:
                    break
            if answer is not None:  # the server ends the stream right after the answer: finish it to reuse
                with anyio.move_on_after(_DRAIN_AFTER_ANSWER):
                    async for _ in chunks:
                        pass
        return answer if answer is not None else {"result": tool_error(stopped_message(alias, exposed))}

    async def _interim(
        self,
        message: dict[str, Any],
        data: bytes,
        call: _Call,
        episode: Episode,
        alias: str,
        writer: _FrontWriter,
        sid: str,
    ) -> None:
        """Traffic on the call's stream before its answer: logs and progress, and requests for the client."""
        method = message.get("method")
        if method is None:
            return
        if "id" in message:  # sampling, elicitation or roots: the client answers on the lane, re-addressed
            relay_id = f"fmp-r-{next(self._ids)}"
            self._relays[(sid, relay_id)] = (call.target, message["id"])
            call.relays.append((sid, relay_id))
            await writer.event(dumps({**message, "id": relay_id}))
        elif method in _PASS_THROUGH:
            await writer.event(data)
        else:
            try:
                notification = NOTIFICATION.validate_python(message)
            except ValidationError:
                return
            await episode.relay_notification(alias, notification)

    async def _notify(self, target: LaneTarget, message: dict[str, Any]) -> None:
        """Post a notification or an answer to the backend session: best effort, shielded and bounded."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                response = await target.pool.post(target.headers, dumps(message))
                await response.read()
            except LaneError:
                logger.info("could not deliver %s to a backend", message.get("method") or "an answer")


class _Fallback:
    pass


_FALLBACK: Any = _Fallback()


def _answer(message: Any) -> dict[str, Any]:
    if isinstance(message, dict) and isinstance(message.get("result"), dict):
        return {"result": message["result"]}
    if isinstance(message, dict) and isinstance(message.get("error"), dict):
        return {"error": message["error"]}
    raise ValueError("not a JSON-RPC answer")
