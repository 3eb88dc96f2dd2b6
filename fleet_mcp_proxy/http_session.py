"""The proxy's side of one streamable-HTTP MCP session with an environment, spoken directly (no SDK client).

An SDK client session per link held task groups, memory streams, an httpx client and its connections: about
66 KB of an idle episode's 191 KB (tracemalloc, docs/benchmarks.md). An idle session needs only its URL, its
session id and negotiated version, the shared connection pool and one task reading the GET stream. Each
request is one POST whose answer (JSON, or an SSE stream carrying progress, logs and the environment's own
requests ahead of the answer) is read in the caller's task, so whatever context the caller set (whose call
this is) holds for the messages that arrive on it.

Failures are reported as the SDK client reported them (`MCPError` codes and messages the callers map to
words for agents): the proxy's behaviour for agents did not change with the client underneath.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any

import anyio
import mcp_types as t
import stamina
from mcp import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from .connpool import lane_pool, release_lane_pool
from .fastlane.http1 import Http1Pool, Http1Response, LaneError
from .fastlane.sse import SseDecoder
from .fastlane.target import extra_headers

logger = logging.getLogger(__name__)

OnMessage = Callable[[dict[str, Any]], Awaitable[None]]
_NOT_ACCEPTED = frozenset({502, 503})
_ACCEPT = b"application/json, text/event-stream"
_SSE = b"text/event-stream"
_RESUME_ATTEMPTS = 2
_GET_ATTEMPTS = 2  # as the SDK client: a GET stream that fails twice in a row is given up
_GET_RETRY = 1.0
_CLIENT_INFO = {"name": "fleet-mcp-proxy", "version": "0.1.0"}
# What the SDK client reported for an HTTP error answer and for an expired session (calls.py maps both).
SERVER_ERROR = "Server returned an error response"
SESSION_GONE = "Session terminated"


class HttpStatusError(Exception):
    """The environment answered an HTTP error instead of MCP."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class HttpSession:
    """One MCP session with an environment over streamable HTTP (handshake era)."""

    def __init__(self, url: str, headers: Mapping[str, str], *, retry_budget: float) -> None:
        self.url = url
        self.pool: Http1Pool = lane_pool(url)  # raises ValueError for anything but plain http(s)
        self._extra = extra_headers(headers)
        self._retry_budget = retry_budget
        self._ids = itertools.count(1)
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._closed = False

    def headers(self, accept: bytes = _ACCEPT) -> tuple[tuple[bytes, bytes], ...]:
        out = [(b"content-type", b"application/json"), (b"accept", accept)]
        if self.session_id is not None:
            out.append((b"mcp-session-id", self.session_id.encode("ascii")))
        if self.protocol_version is not None:
            out.append((b"mcp-protocol-version", self.protocol_version.encode("ascii")))
        return (*out, *self._extra)

    # -- the handshake -------------------------------------------------------------------------------------------
    async def initialize(self, capabilities: dict[str, Any], on_message: OnMessage) -> t.InitializeResult:
        params = {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": capabilities, "clientInfo": _CLIENT_INFO}
        result = await self.request("initialize", params, timeout=None, on_message=on_message)
        parsed = t.InitializeResult.model_validate(result)
        if parsed.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise MCPError(t.INTERNAL_ERROR, f"unsupported protocol version {parsed.protocol_version!r}")
        self.protocol_version = parsed.protocol_version
        await self.notify({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return parsed

    # -- requests ------------------------------------------------------------------------------------------------
    async def request(
        self, method: str, params: Mapping[str, Any] | None, *, timeout: float | None, on_message: OnMessage
    ) -> dict[str, Any]:
        """Send one request; the raw result. Messages that arrive before the answer go to `on_message`.

        Raises:
            MCPError: the environment's own error answer; REQUEST_TIMEOUT after `timeout` (the request is then
                cancelled at the environment); CONNECTION_CLOSED when its answer never came; PARSE_ERROR for
                something that is not JSON-RPC; INTERNAL_ERROR/INVALID_REQUEST for HTTP errors (as the SDK).
            Unreachable: nothing accepted the request (it was never sent), once the retry budget is spent.
        """
        request_id = f"fmp-s-{next(self._ids)}"  # "fmp-N" are the fast lane's
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = dict(params)
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
        # A request may be running at the environment before any byte of its answer came back (a server that
        # answers JSON sends its head only at the end), so a deadline or a cancel is always passed on; one
        # the environment never saw is ignored there.
        try:
            with anyio.fail_after(timeout):
                response = await self._send(b"POST", body)
                return await self._answer(response, request_id, on_message)
        except TimeoutError:
            await self.cancel(request_id, "timed out")
            raise MCPError(t.REQUEST_TIMEOUT, f"Timed out while waiting for response to {method}.") from None
        except LaneError as exc:
            if exc.sent:  # the request went out and its answer never came: its outcome is unknown
                raise MCPError(t.CONNECTION_CLOSED, "Connection closed") from None
            raise Unreachable() from None
        except anyio.get_cancelled_exc_class():
            await self.cancel(request_id, "cancelled by the client")
            raise

    async def notify(self, message: Mapping[str, Any]) -> None:
        """Post a notification or an answer to one of the environment's requests: shielded, bounded, best effort."""
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                response = await self._send(b"POST", body)
                await response.read()
            except (LaneError, HttpStatusError):
                logger.info("could not deliver %s to an environment", message.get("method") or "an answer")

    async def cancel(self, request_id: str, reason: str) -> None:
        params = {"requestId": request_id, "reason": reason}
        await self.notify({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})

    async def _send(
        self, method: bytes, body: bytes, accept: bytes = _ACCEPT, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> Http1Response:
        """One request, sent again only when the environment cannot have acted on it (as transport.py)."""
        headers = (*self.headers(accept), *extra)
        try:
            first = await self.pool.send(method, headers, body)
        except LaneError as exc:
            if exc.sent:
                raise
        else:
            if first.status not in _NOT_ACCEPTED:
                return first
            await first.release()
        response: Http1Response | None = None
        try:
            async for attempt in stamina.retry_context(
                on=_NeverTaken, attempts=3, timeout=self._retry_budget, wait_initial=0.2, wait_max=2.0
            ):
                with attempt:
                    if response is not None:
                        await response.release()
                    try:
                        response = await self.pool.send(method, headers, body)
                    except LaneError as exc:
                        if exc.sent:
                            raise
                        raise _NeverTaken from exc
                    if response.status in _NOT_ACCEPTED:
                        raise _NeverTaken
        except _NeverTaken as exc:
            if response is None:
                raise LaneError("nothing accepted the connection", sent=False) from exc
        assert response is not None
        return response

    async def _answer(self, response: Http1Response, request_id: str, on_message: OnMessage) -> dict[str, Any]:
        if response.status != 200:
            raise await _status_error(response, self.session_id is not None)
        if self.session_id is None and (sid := response.headers.get(b"mcp-session-id")):
            self.session_id = sid.decode("ascii")
        content_type = response.headers.get(b"content-type", b"")
        try:
            if content_type.startswith(b"application/json"):
                return _result(json.loads(await response.read()))
            if not content_type.startswith(b"text/event-stream"):
                await response.release()
                raise MCPError(t.INVALID_REQUEST, "Unexpected content type")
            decoder = SseDecoder()
            for attempt in range(_RESUME_ATTEMPTS + 1):
                answer = await self._read_stream(response, decoder, request_id, on_message)
                if answer is not None:
                    return answer
                if decoder.last_id is None or attempt == _RESUME_ATTEMPTS:
                    break
                # The server closed the stream before the answer but numbered its events: pick it up where it
                # stopped, after the pause it asked for (the SDK client's resumption).
                await anyio.sleep((decoder.retry_ms if decoder.retry_ms is not None else 1000) / 1000)
                response = await self._send(b"GET", b"", _SSE, ((b"last-event-id", decoder.last_id),))
                if response.status != 200:
                    await response.release()
                    break
        except LaneError:
            raise MCPError(t.CONNECTION_CLOSED, "Connection closed") from None
        except ValueError:  # not JSON, or not JSON-RPC: the environment broke the protocol
            raise MCPError(t.PARSE_ERROR, "The environment's answer is not JSON-RPC.") from None
        raise MCPError(t.CONNECTION_CLOSED, "Connection closed")

    async def _read_stream(
        self, response: Http1Response, decoder: SseDecoder, request_id: str, on_message: OnMessage
    ) -> dict[str, Any] | None:
        """The answer to `request_id` from one SSE body, or None when the body ended first."""
        async with aclosing(response.chunks()) as chunks:
            async for chunk in chunks:
                for data in decoder.feed(chunk):
                    message = json.loads(data)
                    if isinstance(message, dict) and "method" not in message and message.get("id") == request_id:
                        with anyio.move_on_after(1):  # the stream ends right after: finish it to reuse it
                            async for _ in chunks:
                                pass
                        return _result(message)
                    if isinstance(message, dict):
                        await on_message(message)
        return None

    # -- the GET stream ------------------------------------------------------------------------------------------
    async def listen(self, on_message: OnMessage) -> None:
        """Read the session's GET stream (the environment's own notifications and requests) until cancelled.

        Reopened after the environment ends it; given up after two failures in a row, as the SDK client does.
        """
        failures = 0
        while failures < _GET_ATTEMPTS and not self._closed:
            try:
                response = await self._send(b"GET", b"", _SSE)
                if response.status == 405:  # the environment offers no GET stream
                    await response.release()
                    return
                if response.status != 200:
                    await response.release()
                    raise HttpStatusError(response.status)
                decoder = SseDecoder()
                async with aclosing(response.chunks()) as chunks:
                    async for chunk in chunks:
                        for data in decoder.feed(chunk):
                            message = json.loads(data)
                            if isinstance(message, dict):
                                await on_message(message)
                failures = 0
            except (LaneError, HttpStatusError, ValueError) as exc:
                failures += 1
                logger.debug("environment GET stream at %s: %s", self.url, type(exc).__name__)
            await anyio.sleep(_GET_RETRY)  # before reopening, as the SDK client: the pause is the subject

    # -- the end -------------------------------------------------------------------------------------------------
    async def aclose(self, terminate: bool = True) -> None:
        """End the session at the environment (DELETE, bounded) and give the shared pool back."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if terminate and self.session_id is not None:
                with anyio.move_on_after(5):
                    try:
                        response = await self.pool.send(b"DELETE", self.headers())
                        await response.read()
                    except LaneError:
                        logger.debug("environment at %s: session end not delivered", self.url)
            await release_lane_pool(self.url)


class Unreachable(MCPError):
    """Nothing accepted the request within the retry budget; worded as the SDK client's HTTP failure."""

    def __init__(self) -> None:
        super().__init__(t.INTERNAL_ERROR, SERVER_ERROR)


class Redirected(Exception):
    """The environment's URL redirects: the link falls back to the SDK client, which follows same-origin ones."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status} redirect")


class _NeverTaken(Exception):
    pass


async def _status_error(response: Http1Response, in_session: bool) -> Exception:
    """What the SDK client made of a non-200 answer to a request (calls.py words each for the agent)."""
    if response.status in (301, 302, 303, 307, 308):
        await response.release()
        return Redirected(response.status)
    if response.status >= 400 and response.headers.get(b"content-type", b"").startswith(b"application/json"):
        try:
            _result(json.loads(await response.read()))
        except MCPError as exc:
            return exc  # a spec-correct server's JSON-RPC error at an HTTP error status
        except (ValueError, LaneError):
            pass
    await response.release()
    if response.status == 202:
        return MCPError(t.INVALID_REQUEST, "server answered a request with 202 Accepted")
    if response.status == 404:
        return MCPError(t.INVALID_REQUEST, SESSION_GONE) if in_session else MCPError(t.METHOD_NOT_FOUND, "Not Found")
    return MCPError(t.INTERNAL_ERROR, SERVER_ERROR)


def _result(message: Any) -> dict[str, Any]:
    if isinstance(message, dict) and isinstance(message.get("result"), dict):
        return message["result"]  # type: ignore[no-any-return]
    if isinstance(message, dict) and isinstance(error := message.get("error"), dict):
        code, text = error.get("code"), error.get("message")
        if isinstance(code, int) and isinstance(text, str):
            raise MCPError(code, text, error.get("data"))
    raise ValueError("not a JSON-RPC answer")
