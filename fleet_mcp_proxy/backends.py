"""One live MCP client link per instance endpoint, owned by its own supervisor task.

A `Client` holds task groups and must be exited by the task that entered it, and an HTTP transport failure
crashes the client's task groups; so every link lives in a supervisor task (started in the proxy-wide task
group) that catches whatever kills it, and request handlers only call into it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any, Protocol

import anyio
import httpx2
import mcp_types as t
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.streamable_http import streamable_http_client
from pydantic import TypeAdapter, ValidationError

from .catalog_memo import shared_list
from .connpool import http_transport, lane_pool, opening_slots, release_http_transport, release_lane_pool
from .fastlane.stdio import StdioTap, tapped_stdio_client
from .fastlane.target import LaneTarget
from .http_session import HttpSession, Redirected, Unreachable
from .providers.base import HttpTarget, Instance, StdioTarget
from .transport import RetryUnacceptedTransport

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
_LIST_METHODS = {
    "tools": "tools/list",
    "prompts": "prompts/list",
    "resources": "resources/list",
    "resourceTemplates": "resources/templates/list",
}
_MAX_PAGES = 1000
NOTIFICATION = TypeAdapter[Any](t.ServerNotification)  # the lane validates with it too
# The environment's own requests the proxy relays to the agent, and what each answer must be.
_RELAYED: dict[str, tuple[type[Any], type[Any]]] = {
    "sampling/createMessage": (t.CreateMessageRequest, t.CreateMessageResult),
    "elicitation/create": (t.ElicitRequest, t.ElicitResult),
    "roots/list": (t.ListRootsRequest, t.ListRootsResult),
}
# What the proxy announces it can answer (it relays each to the agent), as the SDK client announced it.
_CAPABILITIES: dict[str, Any] = {
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "roots": {"listChanged": True},
}


class BackendGone(Exception):
    """The backend link is closed or died; `str()` is written for the agent."""


class LinkEvents(Protocol):
    """What the owning episode does with traffic a backend starts."""

    async def relay_request(self, alias: str, request: t.ServerRequest, result_type: type[Any]) -> Any: ...

    async def relay_notification(self, alias: str, notification: t.ServerNotification) -> None: ...


def _describe(exc: BaseException) -> str:
    """What went wrong, in words fit for an agent and an operator: no exception text, no secret."""
    if isinstance(exc, BaseExceptionGroup):
        return _describe(exc.exceptions[0]) if exc.exceptions else "it failed"
    if isinstance(exc, FileNotFoundError):
        return "its command was not found"
    if isinstance(exc, PermissionError):
        return "its command could not be run (permission denied)"
    if isinstance(exc, httpx2.ConnectError):
        return "nothing accepted the connection at its URL"
    if isinstance(exc, httpx2.TimeoutException):
        return "its URL did not answer in time"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"its URL answered HTTP {exc.response.status_code}"
    if isinstance(exc, Unreachable):
        return "nothing accepted the connection at its URL"
    if isinstance(exc, MCPError):
        if exc.code == t.INTERNAL_ERROR and exc.error.message == "Server returned an error response":
            return "its URL answered an HTTP error"
        return "it closed the connection" if exc.code == t.CONNECTION_CLOSED else f"it answered MCP error {exc.code}"
    return "it stopped unexpectedly"


class BackendLink:
    """The proxy's MCP client session with one backend instance."""

    def __init__(
        self, instance: Instance, events: LinkEvents, *, startup_timeout: float, call_timeout: float = 100.0
    ) -> None:
        self.instance = instance
        # Safe retries of one request end well inside the call's deadline, so none lands after it.
        self._retry_budget = min(15.0, call_timeout / 4)
        self.alias = instance.alias
        self._events = events
        self._startup_timeout = startup_timeout
        self._session: ClientSession | None = None
        self.lists: dict[str, list[dict[str, Any]]] = {key: [] for key in _LIST_METHODS}
        self.capabilities: t.ServerCapabilities | None = None
        self.failure: str | None = None
        self._http: RetryUnacceptedTransport | None = None
        self._lane: LaneTarget | None = None
        self._lane_url = ""
        self._tap: StdioTap | None = None
        self._raw: HttpSession | None = None  # an HTTP environment, spoken to without an SDK client
        self._up = False
        self._tokens = itertools.count(1)
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    @property
    def alive(self) -> bool:
        return self._up and self.failure is None and not self._stopped.is_set()

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, list, report readiness, then hold the link open until `stop()` or the backend dies.

        Links open a bounded number at a time (`opening_slots`), and `startup_timeout` runs from when this one's
        turn comes: it measures the environment, not a queue of other episodes' handshakes in this process.
        """
        started = False
        slots = opening_slots()
        holding = False
        try:
            await slots.acquire()
            holding = True
            with anyio.CancelScope(deadline=anyio.current_time() + self._startup_timeout) as scope:
                async with AsyncExitStack() as stack:
                    if not await self._open_raw(stack):
                        client = await stack.enter_async_context(self._client(stack))
                        self._session = client.session
                        self.capabilities = client.server_capabilities
                    self._up = True
                    await self.refresh()
                    scope.deadline = math.inf
                    started = True
                    holding = False
                    slots.release()
                    task_status.started()
                    async with anyio.create_task_group() as tg:
                        if self._raw is not None:
                            tg.start_soon(self._raw.listen, self._on_stream_message)
                        await self._stop.wait()
                        tg.cancel_scope.cancel()
            if scope.cancelled_caught and not started:
                self.failure = f"did not start within {self._startup_timeout:g} s"
        except* Exception as group:
            self.failure = ("stopped: " if started else "failed to start: ") + _describe(group)
            logger.warning(
                "environment %s (%s) %s [%s]",
                self.alias,
                self.instance.instance_id,
                self.failure,
                ", ".join(type(e).__name__ for e in group.exceptions),
            )
        finally:
            if holding:
                slots.release()
            self._session = None
            self._up = False
            if self._lane is not None and self._raw is None:
                await release_lane_pool(self._lane_url)
            if self._http is not None:
                await release_http_transport()
            self._stopped.set()
            if not started:
                task_status.started()

    async def _open_raw(self, stack: AsyncExitStack) -> bool:
        """The handshake with an HTTP environment over the shared pool; False where the SDK client must serve."""
        target = self.instance.target
        if not isinstance(target, HttpTarget):
            return False
        try:
            raw = HttpSession(target.url, target.headers, retry_budget=self._retry_budget)
        except ValueError:  # not plain http(s)
            return False
        stack.push_async_callback(raw.aclose)
        try:
            result = await raw.initialize(_CAPABILITIES, self._on_stream_message)
        except Redirected:  # the SDK client follows same-origin redirects; this does not
            await raw.aclose(terminate=False)
            return False
        self._raw = raw
        self.capabilities = result.capabilities
        return True

    def _client(self, stack: AsyncExitStack) -> Client:
        target = self.instance.target
        server: Any
        if isinstance(target, StdioTarget):
            params = StdioServerParameters(
                command=target.command, args=list(target.args), env=dict(target.env), cwd=target.cwd
            )
            self._tap = StdioTap()
            server = tapped_stdio_client(params, self._tap)
        else:
            assert isinstance(target, HttpTarget)
            self._http = RetryUnacceptedTransport(http_transport(), timeout=self._retry_budget, owns_inner=False)
            http = httpx2.AsyncClient(
                headers=dict(target.headers), timeout=httpx2.Timeout(30.0, read=None), transport=self._http
            )
            stack.push_async_callback(http.aclose)
            # No SSE event ceiling: a 10 MiB tool result is one event.
            server = streamable_http_client(target.url, http_client=http, max_sse_event_size=None)
        return Client(
            server,
            mode="legacy",
            cache=None,
            sampling_callback=self._on_sampling,
            elicitation_callback=self._on_elicitation,
            list_roots_callback=self._on_roots,
            logging_callback=self._on_log,
            message_handler=self._on_message,
        )

    async def stop(self, timeout: float) -> None:
        """Close the link (the stdio child is stopped by the SDK), waiting at most `timeout` seconds."""
        self._stop.set()
        with anyio.move_on_after(timeout, shield=True):
            await self._stopped.wait()

    def lane_target(self, tool: str | None = None) -> LaneTarget | None:
        """Where the fast lane can send this backend's tool calls (`tool`'s): its HTTP session, once settled."""
        if self._raw is not None:
            if self._lane is None and self._raw.session_id is not None:
                self._lane = LaneTarget(self._raw.pool, self._raw.headers())
            return self._lane if self.alive else None
        http = self._http
        if self._lane is None and http is not None and http.session_id and self.alive:
            target = self.instance.target
            assert isinstance(target, HttpTarget)
            try:
                pool = lane_pool(target.url)
            except ValueError:  # not plain http(s): the SDK path serves it
                return None
            self._lane_url = target.url
            self._lane = LaneTarget.for_session(pool, target.headers, http.session_id, http.protocol_version)
        return self._lane if self.alive else None

    def stdio_tap(self) -> StdioTap | None:
        """Where the stdio lane writes this backend's tool calls and reads their answers: its pipes, while open."""
        tap = self._tap
        return tap if tap is not None and tap.open and self.alive else None

    # -- requests --------------------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the raw result, unvalidated and unre-serialized.

        Raises:
            BackendGone: the link is closed or died.
            MCPError: the backend answered with an error, or REQUEST_TIMEOUT / CONNECTION_CLOSED.
        """
        if not self.alive:
            raise BackendGone(self._gone_message())
        if self._raw is not None:
            return await self._raw_request(method, params, timeout, on_progress)
        session = self._session
        if session is None:
            raise BackendGone(self._gone_message())
        data: dict[str, Any] = {"method": method, "params": dict(params) if params is not None else {}}
        opts: dict[str, Any] = {"timeout": timeout}
        if on_progress is not None:
            opts["on_progress"] = on_progress
        # The typed `send_request` validates the result twice and `call_tool` also checks output schemas;
        # a proxy forwards what it got. These two private members are pinned by mcp==2.3.0 and a test.
        session._stamp(data, opts)  # type: ignore[arg-type]
        return await session._dispatcher.send_raw_request(method, data["params"], opts)  # type: ignore[arg-type]

    async def _raw_request(
        self, method: str, params: Mapping[str, Any] | None, timeout: float, on_progress: ProgressFn | None
    ) -> dict[str, Any]:
        assert self._raw is not None
        sent = dict(params) if params is not None else {}
        token: str | None = None
        if on_progress is not None:
            token = f"fmp-p-{next(self._tokens)}"
            sent["_meta"] = {**(sent.get("_meta") or {}), "progressToken": token}

        async def on_message(message: dict[str, Any]) -> None:
            if message.get("method") == "notifications/progress":
                progress = message.get("params") or {}
                if on_progress is not None and progress.get("progressToken") == token:
                    value = progress.get("progress")
                    if isinstance(value, int | float):
                        await on_progress(float(value), progress.get("total"), progress.get("message"))
                return
            await self._on_message_raw(message, inline=True)

        return await self._raw.request(method, sent, timeout=timeout, on_message=on_message)

    async def list_all(self, key: str, timeout: float) -> list[dict[str, Any]]:
        """Follow a list method's cursors to the end."""
        method = _LIST_METHODS[key]
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await self.request(method, {"cursor": cursor} if cursor else None, timeout=timeout)
            items.extend(page.get(key) or [])
            cursor = page.get("nextCursor")
            if not cursor:
                return items
        raise MCPError(t.INTERNAL_ERROR, f"{method} of {self.alias} did not end after {_MAX_PAGES} pages")

    async def refresh(self, keys: tuple[str, ...] | None = None, timeout: float = 30.0) -> None:
        """Re-read the lists the backend advertises (all of them, or `keys`)."""
        caps = self.capabilities
        wanted = {
            "tools": caps is not None and caps.tools is not None,
            "prompts": caps is not None and caps.prompts is not None,
            "resources": caps is not None and caps.resources is not None,
            "resourceTemplates": caps is not None and caps.resources is not None,
        }
        for key in keys or tuple(_LIST_METHODS):
            if wanted[key]:
                self.lists[key] = shared_list(await self.list_all(key, timeout))

    def _gone_message(self) -> str:
        if self.failure is not None:
            return f"The environment '{self.alias}' is not available ({self.failure})."
        return f"The environment '{self.alias}' has been shut down."

    # -- traffic the backend starts ---------------------------------------------------------------------------
    async def _on_stream_message(self, message: dict[str, Any]) -> None:
        await self._on_message_raw(message, inline=False)

    async def _on_message_raw(self, message: dict[str, Any], *, inline: bool) -> None:
        """A message an HTTP environment sent on its own (GET stream) or ahead of an answer (a call's stream)."""
        method = message.get("method")
        if not isinstance(method, str):
            return  # a stray answer: nothing waits for it
        if "id" in message:
            await self._answer_raw(message)
            return
        if method in ("notifications/progress", "notifications/cancelled"):
            return  # progress reaches the call it belongs to; nothing here was cancelled by the environment
        try:
            notification = NOTIFICATION.validate_python(message)
        except ValidationError:
            logger.info("environment %s sent a malformed %s notification", self.alias, method)
            return
        if isinstance(notification, t.LoggingMessageNotification):
            await self._on_log(notification.params)
        else:
            await self._events.relay_notification(self.alias, notification)

    async def _answer_raw(self, message: dict[str, Any]) -> None:
        """Relay one of the environment's requests to the agent and post the agent's answer back."""
        assert self._raw is not None
        method = message["method"]
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        shapes = _RELAYED.get(method)
        if method == "ping":
            reply["result"] = {}
        elif shapes is None:
            reply["error"] = {"code": t.METHOD_NOT_FOUND, "message": f"Method not found: {method}"}
        else:
            request_type, result_type = shapes
            try:
                request = request_type.model_validate({"method": method, "params": message.get("params")})
            except ValidationError:
                reply["error"] = {"code": t.INVALID_PARAMS, "message": f"Invalid params for {method}"}
            else:
                answer = await self._relay(request, result_type)
                key = "error" if isinstance(answer, t.ErrorData) else "result"
                reply[key] = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
        await self._raw.notify(reply)

    async def _on_sampling(
        self, context: ClientRequestContext, params: t.CreateMessageRequestParams
    ) -> t.CreateMessageResult | t.ErrorData:
        return await self._relay(t.CreateMessageRequest(params=params), t.CreateMessageResult)  # type: ignore[no-any-return]

    async def _on_elicitation(
        self, context: ClientRequestContext, params: t.ElicitRequestParams
    ) -> t.ElicitResult | t.ErrorData:
        return await self._relay(t.ElicitRequest(params=params), t.ElicitResult)  # type: ignore[no-any-return]

    async def _on_roots(self, context: ClientRequestContext) -> t.ListRootsResult | t.ErrorData:
        return await self._relay(t.ListRootsRequest(), t.ListRootsResult)  # type: ignore[no-any-return]

    async def _relay(self, request: Any, result_type: type[Any]) -> Any:
        try:
            return await self._events.relay_request(self.alias, request, result_type)
        except MCPError as exc:
            return exc.error

    async def _on_log(self, params: t.LoggingMessageNotificationParams) -> None:
        await self._events.relay_notification(self.alias, t.LoggingMessageNotification(params=params))

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            logger.info("environment %s transport: %s (%s)", self.alias, _describe(message), type(message).__name__)
            return
        if isinstance(message, t.LoggingMessageNotification | t.ProgressNotification | t.CancelledNotification):
            return  # logs arrive through _on_log; progress through the call's own callback
        await self._events.relay_notification(self.alias, message)
