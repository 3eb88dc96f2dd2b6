"""The MCP server agents talk to: a low-level `Server` whose every list and call is per episode."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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

from .. import __version__, lifecycle, telemetry
from ..adoption import Adopter
from ..calls import forward_tool_call
from ..chatlog import parse_handover
from ..config import EnvironmentConfig, ProxyConfig
from ..episode import Episode, EpisodeEnded
from ..forwarding import tool_error
from ..providers.base import ProvisionError
from ..recorder import now
from ..registry import Registry
from ..synthetic.context import ContextExtra, handle
from ..synthetic.submit import SUBMIT_TOOL_NAME, submitted_result
from ..tasks import Task
from . import handlers as h
from .admission import CallRefused, call_slot
from .episodes import Ctx, ProxyState, StateHolder, episode_for, ready_episode, reserve_instances
from .hop import Forwarder
from .identity import episode_key, task_key
from .remote import Remote
from .toolresult import finish_forwarded, record_call
from .waiting import wait_ready

logger = logging.getLogger(__name__)
STDIO_GRACE = 1.5  # seconds: Claude Desktop and the SDK's stdio_client send SIGTERM 2 s after closing stdin


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
    """Every tools/call is one step of the episode's `max_steps` (steps.py), whatever it turns out to be."""
    episode = episode_for(ctx)
    if isinstance((ctx.params or {}).get("requestState"), str):
        return await _call_tool(ctx, params)  # a 2026-07-28 call continuing after input: the same step
    refusal = episode.steps.take()
    if refusal is not None:
        return tool_error(refusal)
    try:
        return await _call_tool(ctx, params)
    finally:
        episode.steps.done()


async def _call_tool(ctx: Ctx, params: t.CallToolRequestParams) -> HandlerResult:
    episode = episode_for(ctx)
    if episode.chat is not None:  # taken before the call: a submit starts its verifier at once
        take_conversation(episode, (ctx.params or {}).get("_meta"))
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


def take_conversation(episode: Episode, meta: Any) -> None:
    """A harness that holds the real chat hands it over on a tool call; it replaces what the proxy saw.

    Raises:
        MCPError: the chat is malformed (the message says what to send).
    """
    try:
        messages = parse_handover(meta)
    except ValueError as exc:
        raise MCPError(t.INVALID_PARAMS, str(exc)) from None
    if messages is not None and episode.chat is not None:
        episode.chat.hand_over(messages)


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
        extra=ContextExtra(submission_state=submitted, instance_time_left_s=episode.time_left()),
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
            runtime = await lifecycle.start(config, tg, front=front)
            tg.start_soon(lifecycle.recover, runtime)
            registry = Registry(config, environments, runtime.pool, tg, tasks, runtime.recorder, runtime.owner)
            state = ProxyState(config, registry, tg, runtime.pool, runtime.recorder)
            tg.start_soon(registry.reap_idle)
            membership = runtime.membership
            if holder is not None:
                store = runtime.recorder.store
                if membership is not None and membership.address is not None and store is not None:
                    holder.forwarder = Forwarder(store, membership.me, config.cluster, config.max_request_body)
                    adopter = Adopter(registry, store, runtime.pool, membership.me, runtime.finisher())
                    holder.remote = Remote(holder.forwarder, adopter)
                    tg.start_soon(adopter.run)
                holder.sweeper = runtime.sweeper
                holder.state = state
                holder.started.set()
            try:
                yield state
            finally:
                if holder is not None and holder.forwarder is not None:
                    forwarder, holder.forwarder, holder.remote = holder.forwarder, None, None
                    await forwarder.aclose()
                # stdio: the client kills us 2 s after closing stdin, so pending ends go to a finisher at once.
                grace = min(config.shutdown_grace, STDIO_GRACE) if front == "stdio" else config.shutdown_grace
                await lifecycle.stop(runtime, registry, grace=grace)
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
