"""The streamable-HTTP front: `/mcp`, `/healthz` and the operator routes, all but the probes behind Host/Origin."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, ErrorData, JSONRPCError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..config import ProxyConfig
from ..episode import Episode
from .admission import HostOriginGate
from .auth import auth_middleware, current_principal
from .dashboard import routes as operator_routes
from .drain import answer_handed_over
from .episodes import ProxyState, StateHolder
from .hop import FORWARDED_HEADER
from .identity import episode_key
from .lane import FastLane
from .server import ProxyServer

logger = logging.getLogger(__name__)
_LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
_LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


def security_settings(config: ProxyConfig) -> TransportSecuritySettings:
    """DNS-rebinding protection is always on: loopback plus what the operator allowed."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*_LOOPBACK_HOSTS, *config.allowed_hosts],
        allowed_origins=[*_LOOPBACK_ORIGINS, *config.allowed_origins],
    )


def session_not_found() -> Response:
    """Byte for byte the SDK's answer to an unknown session id, so no 404 tells apart why it was given."""
    body = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message="Session not found"))
    return Response(body.model_dump_json(by_alias=True, exclude_unset=True), 404, media_type="application/json")


def _jsonrpc_error(status: int, code: int, message: str) -> Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def _unreachable() -> Response:
    """What the agent gets when the replica holding its episode cannot be reached: worth retrying shortly (once
    that replica's lease runs out, the next request's replica adopts the episode)."""
    message = "The proxy replica that holds this episode cannot be reached right now; try again shortly."
    return _jsonrpc_error(503, INTERNAL_ERROR, message)


class McpEndpoint:
    """Wraps the SDK's session manager with what the episode model adds to plain sessions."""

    def __init__(self, manager: StreamableHTTPSessionManager, holder: StateHolder, lane: FastLane | None) -> None:
        self._manager = manager
        self._asgi = StreamableHTTPASGIApp(manager)
        self._holder = holder
        self.lane = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        state = self._holder.state
        try:
            key = episode_key(request.query_params, request.headers)
        except Exception as exc:  # MCPError with a message for people
            await _jsonrpc_error(400, -32602, str(exc))(scope, receive, send)
            return
        session_id = request.headers.get("mcp-session-id")
        if state is not None and session_id is not None and session_id in state.registry.ended_sessions:
            # The episode behind this session is over (idle timeout): the client must start afresh.
            await session_not_found()(scope, receive, send)
            return
        remote = self._holder.remote  # None unless replicas share a store: no lookups on the default
        if remote is None or state is None:
            await self._serve(state, key, session_id, request, scope, receive, send)
            return
        slot = f"key:{current_principal()}:{key}" if key is not None else (session_id and f"session:{session_id}")
        released = state.registry.handed_over.get(slot) if slot else None
        if released is not None:  # drained away from here: the next replica adopts it
            await answer_handed_over(released, scope, receive, send)
            return
        route = self._remote_route(state, key, session_id)
        if route is not None:
            forwarded = FORWARDED_HEADER in request.headers  # served where it lands, never forwarded again
            served_here = await remote.answer(
                self._manager, route, session_id, scope, receive, send, _unreachable(), forwarded=forwarded
            )
            if served_here is None:
                return
            receive = served_here
        # A request being served holds its episode here: a drain hands it over only once none is (GET streams,
        # which never end by themselves, are simply cut: the client reopens them where the episode went).
        with state.registry.serving(slot if request.method != "GET" else None):
            await self._serve(state, key, session_id, request, scope, receive, send)

    async def _serve(
        self,
        state: ProxyState | None,
        key: str | None,
        session_id: str | None,
        request: Request,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if request.method == "DELETE" and key is not None and session_id is None and state is not None:
            # The explicit end of a keyed episode. A DELETE that carries a session id ends only that
            # transport session: SDK clients send one on every clean exit, and the key outlives them.
            # Keys live in the caller's own namespace: another principal's key is simply not found here.
            state.registry.schedule_end(f"key:{current_principal()}:{key}", "ended by the client")
            await Response(status_code=204)(scope, receive, send)
            return
        if self.lane is not None and session_id is not None and request.method == "POST":
            replay = await self.lane.serve(request, receive, send, key, session_id)
            if replay is None:
                return
            receive = replay
        await self._asgi(scope, receive, send)

    def _remote_route(self, state: ProxyState, key: str | None, session_id: str | None) -> str | None:
        """The store route of a request whose episode or session is not in this process (dict lookups only)."""
        unknown_session = session_id is not None and session_id not in getattr(self._manager, "_server_instances", {})
        if key is not None:
            slot = f"key:{current_principal()}:{key}"
            return slot if slot not in state.registry.episodes or unknown_session else None
        return f"session:{session_id}" if unknown_session else None

    async def terminate_sessions(self, episode: Episode) -> None:
        """Close the transport sessions of an ended episode so connected clients notice at once."""
        servers: dict[str, Any] = getattr(self._manager, "_server_instances", {})
        for session_id in episode.session_ids:
            transport = servers.get(session_id)
            if transport is not None:
                await transport.terminate()


def build_app(config: ProxyConfig, server: ProxyServer, holder: StateHolder) -> Starlette:
    security = security_settings(config)
    guard = TransportSecurityMiddleware(security)  # the same Host/Origin rules the SDK applies on /mcp
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=security,
        # The proxy's own idle timeout (which also sees open GET streams) ends episodes; the
        # transport's reaper only cleans up after clients that vanished.
        session_idle_timeout=config.idle_timeout,
        max_sessions=config.max_sessions,
        max_request_body_size=config.max_request_body,
    )
    lane = FastLane(manager, holder, guard, body_limit=config.max_request_body) if config.fast_lane else None
    holder.lane = lane
    endpoint = McpEndpoint(manager, holder, lane)

    async def episode_record(request: Request) -> Response:
        state = holder.state
        store = state.recorder.store if state is not None else None
        if store is None:
            return JSONResponse({"error": "episodes are not recorded by this proxy"}, status_code=404)
        record = await store.get(request.path_params["episode_id"])
        # With auth on, another principal's record answers exactly like a missing one.
        if record is None or (config.auth.enabled and record.principal != current_principal()):
            return JSONResponse({"error": "no such episode"}, status_code=404)
        return JSONResponse(record.to_json())

    async def healthz(request: Request) -> Response:
        state = holder.state
        episodes = len(state.registry.episodes) if state is not None else 0
        return JSONResponse({"status": "ok" if state is not None else "starting", "episodes": episodes})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            assert holder.state is not None
            holder.state.registry.on_end.append(endpoint.terminate_sessions)
            yield

    return Starlette(
        routes=[
            Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"]),
            Route("/healthz", healthz),
            Route("/episodes/{episode_id:str}", episode_record),
            *operator_routes(holder),  # /readyz, /status, /dashboard
        ],
        lifespan=lifespan,
        # App-wide, outermost first: Host/Origin on every route and method but the probes, then auth.
        middleware=[Middleware(HostOriginGate, guard=guard), *auth_middleware(config.auth)],
    )
