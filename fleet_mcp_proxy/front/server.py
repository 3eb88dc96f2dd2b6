"""The MCP server agents talk to: a low-level `Server` whose every list and call is per episode."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

import anyio
import mcp_types as t
from mcp import MCPError
from mcp.server import NotificationOptions, Server
from mcp.server.caching import CacheHint
from mcp.server.context import CallNext, HandlerResult
from mcp.server.models import InitializationOptions
from mcp_types.methods import CacheableMethod
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .. import __version__, telemetry
from ..calls import forward_tool_call
from ..config import EnvironmentConfig, ProxyConfig
from ..episode import Episode, EpisodeEnded
from ..forwarding import tool_error
from ..providers.base import ProvisionError
from ..providers.pool import InstancePool
from ..recorder import Recorder, default_store_path, now
from ..registry import Registry
from ..store import EpisodeStore, open_store
from ..synthetic.context import ContextExtra, handle
from ..synthetic.submit import SUBMIT_TOOL_NAME, submitted_result
from ..tasks import Task
from . import handlers as h
from .admission import CallRefused, call_slot
from .episodes import Ctx, ProxyState, StateHolder, episode_for, ready_episode, reserve_instances
from .identity import episode_key, task_key
from .toolresult import finish_forwarded, record_call
from .waiting import wait_ready

logger = logging.getLogger(__name__)


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


# -- tools ----------------------------------------------------------------------------------------------------
async def list_tools(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx, tools_from_cache=True)
    return {"tools": list(episode.tools.tools)}


async def call_tool(ctx: Ctx, params: t.CallToolRequestParams) -> HandlerResult:
    episode = episode_for(ctx)
    try:
        reserve_instances(ctx, episode)  # max_leases_per_principal: a dict lookup once reserved
        await wait_ready(ctx, episode)
    except (EpisodeEnded, ProvisionError) as exc:
        # The agent reads tool results, not protocol errors: say what happened there.
        prefix = "" if isinstance(exc, EpisodeEnded) else "The environments could not be started: "
        return tool_error(f"{prefix}{exc}")
    route = episode.tools.route(params.name)
    if route is None:
        raise MCPError(t.INVALID_PARAMS, f"Unknown tool: {params.name}")
    started, clock = now(), anyio.current_time()
    if route.alias is None:
        answer = await _submit(episode, ctx) if params.name == SUBMIT_TOOL_NAME else _context_tool(episode, params)
        record_call(episode, params.name, params.arguments, answer, started, clock)
        if telemetry.ON:
            telemetry.tool_call(episode.id, None, params.name, answer, clock)
        return answer
    if episode.outcome.finished:
        return tool_error("This episode is finished: an answer was submitted. Start a new episode to continue.")
    try:
        with call_slot(ctx.lifespan_context.limits, episode.principal):  # max_calls_per_principal: no I/O
            result = await forward_tool_call(ctx, episode, route, params.name)
    except CallRefused as refused:
        return tool_error(str(refused))
    except MCPError:
        if telemetry.ON:  # the backend answered a protocol error, passed on as such
            telemetry.tool_call(episode.id, route.alias, params.name, None, clock)
        raise
    if telemetry.ON:
        telemetry.tool_call(episode.id, route.alias, params.name, result, clock)
    return finish_forwarded(episode, params.name, params.arguments, result, started, clock)


def _context_tool(episode: Episode, params: t.CallToolRequestParams) -> HandlerResult:
    if episode.context is None or episode.outputs is None or episode.call_log is None:
        raise MCPError(t.INVALID_PARAMS, f"Unknown tool: {params.name}")
    submitted = "submitted" if episode.outcome.finished else "not submitted"
    return handle(
        params.name,
        params.arguments,
        store=episode.outputs,
        log=episode.call_log,
        settings=episode.context,
        extra=ContextExtra(submission_state=submitted),
    )


async def _submit(episode: Episode, ctx: Ctx) -> HandlerResult:
    """`submit_final_answer`: the first answer counts; verification starts at once in the background."""
    answer = ((ctx.params or {}).get("arguments") or {}).get("answer")
    if not isinstance(answer, str):
        return tool_error("submit_final_answer needs an 'answer' string.")
    if episode.outcome.submit(answer) is None:
        return tool_error("An answer was already submitted for this episode; only the first one counts.")
    await episode.resource_changed("submission")
    episode.task_group.start_soon(episode.verify, "submit")
    return submitted_result()


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


async def task_instructions(ctx: Ctx, call_next: CallNext) -> HandlerResult:
    """The bound task's prompt is the server `instructions` (per episode, so set on the way out)."""
    result = await call_next(ctx)
    if ctx.method in ("initialize", "server/discover") and isinstance(result, dict):
        state: ProxyState = ctx.lifespan_context
        key = state.config.task
        if ctx.request is not None:
            key = task_key(ctx.request.query_params, ctx.request.headers) or key
        task = state.registry.tasks.get(key) if key else None
        if task is not None:
            result["instructions"] = task.prompt
    return result


_HANDLERS: list[tuple[str, type[Any], Callable[[Ctx, Any], Awaitable[HandlerResult]]]] = [
    ("tools/list", t.PaginatedRequestParams, list_tools),
    ("tools/call", t.CallToolRequestParams, call_tool),
    ("prompts/list", t.PaginatedRequestParams, h.list_prompts),
    ("prompts/get", t.GetPromptRequestParams, h.get_prompt),
    ("resources/list", t.PaginatedRequestParams, h.list_resources),
    ("resources/templates/list", t.PaginatedRequestParams, h.list_templates),
    ("resources/read", t.ReadResourceRequestParams, h.read_resource),
    ("resources/subscribe", t.SubscribeRequestParams, h.subscribe),
    ("resources/unsubscribe", t.UnsubscribeRequestParams, h.unsubscribe),
    ("completion/complete", t.CompleteRequestParams, h.complete),
    ("logging/setLevel", t.SetLevelRequestParams, h.set_level),
    ("subscriptions/listen", t.SubscriptionsListenRequestParams, h.listen),
]


async def _open_store(config: ProxyConfig) -> EpisodeStore | None:
    if not config.record_episodes:
        return None
    path = Path(config.store_path) if config.store_path else default_store_path()
    try:
        await anyio.Path(path).parent.mkdir(parents=True, exist_ok=True)
        return await open_store(path)
    except Exception:  # the record is valuable, but not worth refusing agents over
        logger.exception("cannot open the episode store %s; episodes are not recorded", path)
        return None


def build_server(
    config: ProxyConfig,
    environments: tuple[EnvironmentConfig, ...],
    holder: StateHolder | None = None,
    *,
    front: str = "http",
    tasks: dict[str, Task] | None = None,
) -> ProxyServer:
    """The front server; its lifespan owns the proxy-wide task group, the instance pool and the registry."""

    @asynccontextmanager
    async def lifespan(_: Server[ProxyState]) -> AsyncIterator[ProxyState]:
        async with anyio.create_task_group() as tg:
            recorder = Recorder(await _open_store(config))
            tg.start_soon(recorder.run)
            pool = InstancePool(config, tg, front=front)
            await pool.start()
            registry = Registry(config, environments, pool, tg, tasks, recorder)
            state = ProxyState(config, registry, tg, pool, recorder)
            tg.start_soon(registry.reap_idle)
            if holder is not None:
                holder.state = state
                holder.started.set()
            try:
                yield state
            finally:
                await registry.shutdown()
                await pool.shutdown()
                await recorder.close(config.end_timeout)
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
    server.middleware.append(task_instructions)
    return server
