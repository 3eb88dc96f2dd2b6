"""Which episode a request belongs to, and the proxy-wide state handlers reach through the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as t
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.server.connection import Connection
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ..config import ProxyConfig
from ..episode import Episode, EpisodeEnded
from ..providers.base import ProvisionError
from ..providers.pool import InstancePool
from ..recorder import Recorder
from ..registry import Registry
from ..sweep import Sweeper
from .auth import current_principal
from .hop import Forwarder
from .identity import RequestIdentity, episode_key, episode_slot, task_key
from .limits import PrincipalLimits
from .remote import Remote
from .waiting import wait_ready

Ctx = ServerRequestContext[Any, Any]


@dataclass
class ProxyState:
    """What every handler reaches through the server lifespan."""

    config: ProxyConfig
    registry: Registry
    task_group: anyio.abc.TaskGroup
    pool: InstancePool
    recorder: Recorder
    limits: PrincipalLimits = field(default_factory=PrincipalLimits)

    def __post_init__(self) -> None:
        self.limits = PrincipalLimits.from_config(self.config)
        self.registry.on_end.append(self._release_leases)

    async def _release_leases(self, episode: Episode) -> None:
        self.limits.release(episode.id)


@dataclass
class StateHolder:
    """Lets the HTTP layer reach the state the server lifespan creates."""

    state: ProxyState | None = None
    started: anyio.Event = field(default_factory=anyio.Event)
    lane: Any = None  # the HTTP front's FastLane, when on: its `served` count is an operator figure
    forwarder: Forwarder | None = None  # set when replicas share a store: relays requests to their owner
    remote: Remote | None = None  # with it: forward, or adopt an episode whose owner is gone
    sweeper: Sweeper | None = None  # the fleet-wide sweep, when replicas share a store (its figures for /status)


def connection_of(ctx: Ctx) -> Connection:
    """The per-client `Connection`. Private in mcp 2.3.0 (pinned; a test fails loudly if it moves)."""
    conn = ctx.session._connection
    assert isinstance(conn, Connection)
    return conn


def _identity(ctx: Ctx) -> RequestIdentity:
    request = ctx.request
    assert request is not None
    key = episode_key(request.query_params, request.headers)
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    session_id = None if modern else connection_of(ctx).session_id
    return RequestIdentity(current_principal(), key, session_id, modern)


def episode_for(ctx: Ctx) -> Episode:
    """Find or open the episode of this request and bind the client connection to it."""
    state: ProxyState = ctx.lifespan_context
    registry = state.registry
    if registry.closing:
        raise MCPError(t.INVALID_REQUEST, "The proxy is shutting down.")
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    if ctx.request is None:  # stdio or in-process: the process is the episode
        episode = registry.open("stdio", "local", state.config.task)
    else:
        identity = _identity(ctx)
        slot = episode_slot(identity, default_episode=state.config.default_episode)
        requested = task_key(ctx.request.query_params, ctx.request.headers) or state.config.task
        if slot not in registry.episodes:
            refusal = state.limits.episode_refusal(identity.principal, registry.episodes.values())
            if refusal is not None:
                raise MCPError(t.INVALID_REQUEST, refusal)
        episode = registry.open(slot, identity.principal, requested)
        if identity.session_id is not None and identity.session_id not in episode.session_ids:
            episode.session_ids.add(identity.session_id)
            if registry.shares_routes:  # with its handshake: a replica adopting the episode revives the session
                route = f"session:{identity.session_id}"
                episode.recorder.emit("add_route", route, episode.id, _handshake(connection_of(ctx)))
    if not modern:
        conn = connection_of(ctx)
        if conn.state.get("fmp_episode") is not episode:
            conn.state["fmp_episode"] = episode
            episode.attach(conn)
            conn.exit_stack.push_async_callback(_connection_closed, registry, episode, conn)
    episode.touch()
    return episode


def _handshake(conn: Connection) -> dict[str, Any] | None:
    params = conn.client_params
    return params.model_dump(mode="json", by_alias=True, exclude_none=True) if params is not None else None


async def _connection_closed(registry: Registry, episode: Episode, conn: Connection) -> None:
    episode.detach(conn)
    if episode.key.startswith("session:"):
        registry.schedule_end(episode.key, "session closed")


def reserve_instances(ctx: Ctx, episode: Episode) -> None:
    """Count the episode's instances against its principal's cap before it first provisions (a dict lookup after).

    Raises:
        ProvisionError: the cap would be exceeded; the message names `max_leases_per_principal`.
    """
    if episode.ended is not None:  # its end already released what it held; ready() says it is over
        return
    state: ProxyState = ctx.lifespan_context
    refusal = state.limits.reserve(episode.id, episode.principal, len(episode.environments))
    if refusal is not None:
        raise ProvisionError(refusal)


async def ready_episode(ctx: Ctx, *, tools_from_cache: bool = False) -> Episode:
    """The request's episode, provisioned; or, with `tools_from_cache`, with its tool list from the catalog
    cache while provisioning runs behind it."""
    episode = episode_for(ctx)
    try:
        reserve_instances(ctx, episode)
        if tools_from_cache and not episode.provisioned and await episode.tools_before_ready():
            return episode
        await wait_ready(ctx, episode)
    except EpisodeEnded as exc:
        raise MCPError(t.INVALID_REQUEST, str(exc)) from None
    except ProvisionError as exc:
        raise MCPError(t.INTERNAL_ERROR, f"The environments could not be started: {exc}") from None
    return episode
