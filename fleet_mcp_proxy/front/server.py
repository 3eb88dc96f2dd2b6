"""The MCP server agents talk to: a low-level `Server` whose every list and call is per episode."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, get_args

import anyio
import anyio.abc
import mcp_types as t
from mcp import MCPError
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.caching import CacheHint
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult
from mcp.server.models import InitializationOptions
from mcp_types.methods import CacheableMethod
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .. import __version__
from ..backends import BackendGone
from ..calls import forward_tool_call
from ..config import EnvironmentConfig, ProxyConfig
from ..episode import Episode, EpisodeEnded
from ..forwarding import forward_params, tool_error
from ..providers.base import ProvisionError
from ..providers.pool import InstancePool
from ..registry import Registry
from .identity import RequestIdentity, episode_key, episode_slot

logger = logging.getLogger(__name__)
Ctx = ServerRequestContext[Any, Any]


@dataclass
class ProxyState:
    """What every handler reaches through the server lifespan."""

    config: ProxyConfig
    registry: Registry
    task_group: anyio.abc.TaskGroup
    pool: InstancePool


@dataclass
class StateHolder:
    """Lets the HTTP layer reach the state the server lifespan creates."""

    state: ProxyState | None = None
    started: anyio.Event = field(default_factory=anyio.Event)


class ProxyServer(Server[ProxyState]):
    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        # The HTTP session manager calls this with no arguments; the catalog can change after
        # provisioning, so clients must know to re-list.
        options = notification_options or NotificationOptions(
            prompts_changed=True, resources_changed=True, tools_changed=True
        )
        return super().create_initialization_options(options, experimental_capabilities, extensions)


def connection_of(ctx: Ctx) -> Connection:
    """The per-client `Connection`. Private in mcp 2.3.0 (pinned; a test fails loudly if it moves)."""
    conn = ctx.session._connection
    assert isinstance(conn, Connection)
    return conn


def _identity(ctx: Ctx) -> RequestIdentity:
    request = ctx.request
    assert request is not None
    token = get_access_token()
    principal = token.client_id if token is not None else "anonymous"
    key = episode_key(request.query_params, request.headers)
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    session_id = None if modern else connection_of(ctx).session_id
    return RequestIdentity(principal, key, session_id, modern)


def episode_for(ctx: Ctx) -> Episode:
    """Find or open the episode of this request and bind the client connection to it."""
    state: ProxyState = ctx.lifespan_context
    registry = state.registry
    if registry.closing:
        raise MCPError(t.INVALID_REQUEST, "The proxy is shutting down.")
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    if ctx.request is None:  # stdio or in-process: the process is the episode
        episode = registry.open("stdio", "local")
    else:
        identity = _identity(ctx)
        slot = episode_slot(identity, default_episode=state.config.default_episode)
        episode = registry.open(slot, identity.principal)
        if identity.session_id is not None:
            episode.session_ids.add(identity.session_id)
    if not modern:
        conn = connection_of(ctx)
        if conn.state.get("fmp_episode") is not episode:
            conn.state["fmp_episode"] = episode
            episode.attach(conn)
            conn.exit_stack.push_async_callback(_connection_closed, registry, episode, conn)
    episode.touch()
    return episode


async def _connection_closed(registry: Registry, episode: Episode, conn: Connection) -> None:
    episode.detach(conn)
    if episode.key.startswith("session:"):
        registry.schedule_end(episode.key, "session closed")


async def ready_episode(ctx: Ctx) -> Episode:
    episode = episode_for(ctx)
    try:
        await episode.ready()
    except EpisodeEnded as exc:
        raise MCPError(t.INVALID_REQUEST, str(exc)) from None
    except ProvisionError as exc:
        raise MCPError(t.INTERNAL_ERROR, f"The environments could not be started: {exc}") from None
    return episode


# -- tools ----------------------------------------------------------------------------------------------------
async def list_tools(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    return {"tools": list(episode.tools.tools)}


async def call_tool(ctx: Ctx, params: t.CallToolRequestParams) -> HandlerResult:
    episode = episode_for(ctx)
    try:
        await episode.ready()
    except (EpisodeEnded, ProvisionError) as exc:
        # The agent reads tool results, not protocol errors: say what happened there.
        prefix = "" if isinstance(exc, EpisodeEnded) else "The environments could not be started: "
        return tool_error(f"{prefix}{exc}")
    route = episode.tools.route(params.name)
    if route is None or route.alias is None:
        raise MCPError(t.INVALID_PARAMS, f"Unknown tool: {params.name}")
    return await forward_tool_call(ctx, episode, route, params.name)


# -- prompts, resources, completion, logging --------------------------------------------------------------------
async def list_prompts(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    return {"prompts": list((await ready_episode(ctx)).prompts.prompts)}


async def get_prompt(ctx: Ctx, params: t.GetPromptRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    route = episode.prompts.route(params.name)
    if route is None or route.alias is None:
        raise MCPError(t.INVALID_PARAMS, f"Unknown prompt: {params.name}")
    return await _forward(episode, route.alias, "prompts/get", forward_params(ctx.params, name=route.original))


async def list_resources(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    return {"resources": list((await ready_episode(ctx)).resources.resources)}


async def list_templates(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    return {"resourceTemplates": list((await ready_episode(ctx)).resources.templates)}


def _route_uri(episode: Episode, uri: str) -> tuple[str, str]:
    routed = episode.resources.route_uri(uri)
    if routed is None:
        raise MCPError(t.INVALID_PARAMS, f"Unknown resource: {uri}")
    return routed


async def read_resource(ctx: Ctx, params: t.ReadResourceRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    alias, original = _route_uri(episode, str(params.uri))
    result = await _forward(episode, alias, "resources/read", forward_params(ctx.params, uri=original))
    for item in result.get("contents") or []:
        if isinstance(item, dict) and item.get("uri") == original:
            item["uri"] = str(params.uri)
    return result


async def subscribe(ctx: Ctx, params: t.SubscribeRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    alias, original = _route_uri(episode, str(params.uri))
    return await _forward(episode, alias, "resources/subscribe", forward_params(ctx.params, uri=original))


async def unsubscribe(ctx: Ctx, params: t.UnsubscribeRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    alias, original = _route_uri(episode, str(params.uri))
    return await _forward(episode, alias, "resources/unsubscribe", forward_params(ctx.params, uri=original))


async def complete(ctx: Ctx, params: t.CompleteRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    ref = dict((ctx.params or {}).get("ref") or {})
    if ref.get("type") == "ref/prompt":
        route = episode.prompts.route(str(ref.get("name")))
        if route is None or route.alias is None:
            raise MCPError(t.INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
        alias, ref["name"] = route.alias, route.original
    else:
        alias, ref["uri"] = _route_uri(episode, str(ref.get("uri")))
    return await _forward(episode, alias, "completion/complete", forward_params(ctx.params, ref=ref))


async def set_level(ctx: Ctx, params: t.SetLevelRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    async with anyio.create_task_group() as tg:
        for alias in list(episode.links):
            tg.start_soon(_forward, episode, alias, "logging/setLevel", forward_params(ctx.params))
    return {}


async def listen(ctx: Ctx, params: t.SubscriptionsListenRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    for uri in params.notifications.resource_subscriptions or []:
        alias, original = _route_uri(episode, str(uri))
        await _forward(episode, alias, "resources/subscribe", {"uri": original})
    return await episode.listen(ctx, params)


async def _forward(episode: Episode, alias: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    episode.inflight += 1
    try:
        link = episode.link(alias)
        return await link.request(method, params, timeout=episode.environments[alias].call_timeout)
    except BackendGone as exc:
        raise MCPError(t.INTERNAL_ERROR, str(exc)) from None
    finally:
        episode.inflight -= 1
        episode.touch()


def _era_complete(
    handler: Callable[[Ctx, Any], Awaitable[HandlerResult]],
) -> Callable[[Ctx, Any], Awaitable[HandlerResult]]:
    """Results forwarded raw from a handshake-era backend lack the 2026-07-28 `resultType`."""

    async def wrapped(ctx: Ctx, params: Any) -> HandlerResult:
        result = await handler(ctx, params)
        if isinstance(result, dict) and "resultType" not in result and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result["resultType"] = "complete"
        return result

    return wrapped


# -- assembly ---------------------------------------------------------------------------------------------------
async def refuse_keyless_discover(ctx: Ctx, call_next: CallNext) -> HandlerResult:
    """Steer keyless HTTP clients to the handshake era, where the transport session is the episode."""
    if ctx.method == "server/discover" and ctx.request is not None:
        state: ProxyState = ctx.lifespan_context
        keyed = episode_key(ctx.request.query_params, ctx.request.headers) is not None
        if not keyed and not state.config.default_episode:
            raise MCPError(t.METHOD_NOT_FOUND, "Method not found")
    return await call_next(ctx)


_HANDLERS: list[tuple[str, type[Any], Callable[[Ctx, Any], Awaitable[HandlerResult]]]] = [
    ("tools/list", t.PaginatedRequestParams, list_tools),
    ("tools/call", t.CallToolRequestParams, call_tool),
    ("prompts/list", t.PaginatedRequestParams, list_prompts),
    ("prompts/get", t.GetPromptRequestParams, get_prompt),
    ("resources/list", t.PaginatedRequestParams, list_resources),
    ("resources/templates/list", t.PaginatedRequestParams, list_templates),
    ("resources/read", t.ReadResourceRequestParams, read_resource),
    ("resources/subscribe", t.SubscribeRequestParams, subscribe),
    ("resources/unsubscribe", t.UnsubscribeRequestParams, unsubscribe),
    ("completion/complete", t.CompleteRequestParams, complete),
    ("logging/setLevel", t.SetLevelRequestParams, set_level),
    ("subscriptions/listen", t.SubscriptionsListenRequestParams, listen),
]


def build_server(
    config: ProxyConfig,
    environments: tuple[EnvironmentConfig, ...],
    holder: StateHolder | None = None,
    *,
    front: str = "http",
) -> ProxyServer:
    """The front server; its lifespan owns the proxy-wide task group, the instance pool and the registry."""

    @asynccontextmanager
    async def lifespan(_: Server[ProxyState]) -> AsyncIterator[ProxyState]:
        async with anyio.create_task_group() as tg:
            pool = InstancePool(config, tg, front=front)
            await pool.start()
            registry = Registry(config, environments, pool, tg)
            state = ProxyState(config, registry, tg, pool)
            tg.start_soon(registry.reap_idle)
            if holder is not None:
                holder.state = state
                holder.started.set()
            try:
                yield state
            finally:
                await registry.shutdown()
                await pool.shutdown()
                tg.cancel_scope.cancel()

    server = ProxyServer(
        "fleet-mcp-proxy",
        version=__version__,
        lifespan=lifespan,
        get_tool_input_schema=lambda _name: None,  # backends validate their own arguments
        # Lists are per episode and change after provisioning: never cache them, never share them.
        cache_hints={method: CacheHint(ttl_ms=0, scope="private") for method in get_args(CacheableMethod)},
    )
    for method, params_type, handler in _HANDLERS:
        server.add_request_handler(method, params_type, _era_complete(handler))
    server.middleware.append(refuse_keyless_discover)
    return server
