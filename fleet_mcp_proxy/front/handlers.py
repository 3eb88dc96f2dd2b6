"""Prompts, resources, completion, logging and listen: routed to the backend that owns them, or answered
by the proxy for its own `fleet://` resources and task prompt."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as t
from mcp import MCPError
from mcp.server.context import HandlerResult

from .. import resources as proxy_resources
from ..backends import BackendGone
from ..episode import Episode
from ..forwarding import forward_params
from .episodes import Ctx, episode_for, ready_episode

# -- prompts, resources, completion, logging --------------------------------------------------------------------
TASK_PROMPT = "fleet_task"


def _task_prompts(episode: Episode) -> list[dict[str, Any]]:
    if episode.task is None:
        return []
    return [{"name": TASK_PROMPT, "description": f"The task of this episode ({episode.task.task_key})."}]


async def list_prompts(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    return {"prompts": _task_prompts(episode) + list(episode.prompts.prompts)}


async def get_prompt(ctx: Ctx, params: t.GetPromptRequestParams) -> HandlerResult:
    episode = episode_for(ctx)
    if params.name == TASK_PROMPT and episode.task is not None:
        text = {"type": "text", "text": episode.task.prompt}
        return {"description": episode.task.task_key, "messages": [{"role": "user", "content": text}]}
    episode = await ready_episode(ctx)
    route = episode.prompts.route(params.name)
    if route is None or route.alias is None:
        raise MCPError(t.INVALID_PARAMS, f"Unknown prompt: {params.name}")
    return await _forward(episode, route.alias, "prompts/get", forward_params(ctx.params, name=route.original))


async def list_resources(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    episode = await ready_episode(ctx)
    return {"resources": proxy_resources.list_resources(episode) + list(episode.resources.resources)}


async def list_templates(ctx: Ctx, params: t.PaginatedRequestParams) -> HandlerResult:
    return {"resourceTemplates": list((await ready_episode(ctx)).resources.templates)}


def _route_uri(episode: Episode, uri: str) -> tuple[str, str]:
    routed = episode.resources.route_uri(uri)
    if routed is None:
        raise MCPError(t.INVALID_PARAMS, f"Unknown resource: {uri}")
    return routed


async def read_resource(ctx: Ctx, params: t.ReadResourceRequestParams) -> HandlerResult:
    if proxy_resources.is_proxy_uri(str(params.uri)):  # the proxy's own: no provisioning needed
        return proxy_resources.read_resource(episode_for(ctx), str(params.uri))
    episode = await ready_episode(ctx)
    alias, original = _route_uri(episode, str(params.uri))
    result = await _forward(episode, alias, "resources/read", forward_params(ctx.params, uri=original))
    for item in result.get("contents") or []:
        if isinstance(item, dict) and item.get("uri") == original:
            item["uri"] = str(params.uri)
    return result


async def subscribe(ctx: Ctx, params: t.SubscribeRequestParams) -> HandlerResult:
    return await _subscription(ctx, str(params.uri), "resources/subscribe")


async def unsubscribe(ctx: Ctx, params: t.UnsubscribeRequestParams) -> HandlerResult:
    return await _subscription(ctx, str(params.uri), "resources/unsubscribe")


async def _subscription(ctx: Ctx, uri: str, method: str) -> HandlerResult:
    """The proxy's own URIs are tracked per episode; every other one is forwarded to its backend."""
    if proxy_resources.is_proxy_uri(uri):
        episode = episode_for(ctx)
        if method == "resources/subscribe":
            proxy_resources.read_resource(episode, uri)  # unknown URIs are refused
            episode.subscribed.add(uri)
        else:
            episode.subscribed.discard(uri)
        return {}
    episode = await ready_episode(ctx)
    alias, original = _route_uri(episode, uri)
    return await _forward(episode, alias, method, forward_params(ctx.params, uri=original))


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
        if proxy_resources.is_proxy_uri(str(uri)):
            continue  # the proxy publishes its own updates on the episode's bus
        alias, original = _route_uri(episode, str(uri))
        await _forward(episode, alias, "resources/subscribe", {"uri": original})
    return await episode.listen(ctx, params)


async def _forward(episode: Episode, alias: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        with episode.busy():
            return await episode.link(alias).request(method, params, timeout=episode.environments[alias].call_timeout)
    except BackendGone as exc:
        raise MCPError(t.INTERNAL_ERROR, str(exc)) from None
