"""Transparency as parity: the same checks run directly against a backend and through the proxy must agree.

One backend behind the proxy means no renames, so observations must be identical. Fronts: streamable HTTP
and stdio; eras: the 2025-11-25 handshake and 2026-07-28 (with an episode key over HTTP).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as t
import pytest
from helpers import (
    KITCHEN,
    PY,
    config_with,
    http_client,
    kitchen_cmd,
    kitchen_http,
    proxy_http,
    stdio_proxy_params,
)
from mcp import Client, MCPError, StdioServerParameters

MODERN = "2026-07-28"
_DROP_META = ("io.modelcontextprotocol/serverInfo",)


@dataclass
class Notes:
    logs: list[tuple[str, Any, str | None]] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    updated: anyio.Event = field(default_factory=anyio.Event)


def _callbacks(notes: Notes) -> dict[str, Any]:
    async def sampling(ctx: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
        first = params.messages[0].content
        text = getattr(first, "text", "?")
        return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text=f"re:{text}"), model="m")

    async def elicit(ctx: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
        return t.ElicitResult(action="accept", content={"n": "bob"})

    async def roots(ctx: Any) -> t.ListRootsResult:
        return t.ListRootsResult(roots=[t.Root(uri="file:///tmp/root-a")])

    async def log(params: t.LoggingMessageNotificationParams) -> None:
        if params.logger != "fleet-mcp-proxy":  # the proxy's own provisioning reports are not the backend's
            notes.logs.append((params.level, params.data, params.logger))

    async def message(msg: Any) -> None:
        if isinstance(msg, t.ToolListChangedNotification):
            notes.notifications.append("tools/list_changed")
            notes.changed.set()
        elif isinstance(msg, t.ResourceUpdatedNotification):
            notes.notifications.append(f"resources/updated {msg.params.uri}")
            notes.updated.set()

    return {
        "sampling_callback": sampling,
        "elicitation_callback": elicit,
        "list_roots_callback": roots,
        "logging_callback": log,
        "message_handler": message,
    }


def norm(value: Any) -> Any:
    """Wire form minus what a hop legitimately adds (era stamps, cache hints)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(by_alias=True, mode="json", exclude_none=True)
    if isinstance(value, dict):
        out = {k: norm(v) for k, v in value.items() if k not in ("resultType", "ttlMs", "cacheScope")}
        if isinstance(out.get("_meta"), dict):
            out["_meta"] = {k: v for k, v in out["_meta"].items() if k not in _DROP_META} or None
            if out["_meta"] is None:
                del out["_meta"]
        return out
    if isinstance(value, list):
        return [norm(v) for v in value]
    return value


async def _error_or(awaitable: Awaitable[Any]) -> Any:
    try:
        return norm(await awaitable)
    except MCPError as exc:
        return {"error": exc.code, "message": exc.message, "data": exc.data}


async def _all_tools(c: Client) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    while True:
        page = await c.list_tools(cursor=cursor)
        tools += page.tools
        if not (cursor := page.next_cursor):
            return sorted((norm(x) for x in tools), key=lambda d: d["name"])


async def observe(c: Client, notes: Notes, *, legacy: bool) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    with anyio.fail_after(60):
        obs["tools"] = json.dumps(await _all_tools(c), sort_keys=True)
        obs["echo"] = await _error_or(c.call_tool("echo", {"text": "héllo"}))
        obs["add"] = await _error_or(c.call_tool("add", {"a": {"x": 1.5}, "b": {"x": 2}}))
        obs["media"] = await _error_or(c.call_tool("media", {}))
        obs["fail"] = await _error_or(c.call_tool("fail", {}))
        obs["protocol_error"] = await _error_or(c.call_tool("protocol_error", {}))
        obs["big"] = len((await c.call_tool("big", {"size": 3 * 1024 * 1024})).content[0].text)  # type: ignore[union-attr]
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append((p, total, message))

        obs["count"] = await _error_or(c.call_tool("count", {"n": 4}, progress_callback=on_progress))
        obs["progress"] = sorted(progress)
        obs["resources"] = norm(await c.list_resources())
        obs["templates"] = norm(await c.list_resource_templates())
        obs["read"] = await _error_or(c.read_resource("mem://a/info"))
        obs["read_template"] = await _error_or(c.read_resource("mem://a/items/7"))
        obs["read_unknown"] = await _error_or(c.read_resource("mem://nowhere"))
        obs["prompts"] = norm(await c.list_prompts())
        obs["prompt"] = await _error_or(c.get_prompt("greet", {"who": "ann"}))
        obs["complete"] = await _error_or(
            c.complete(t.PromptReference(type="ref/prompt", name="greet"), {"name": "who", "value": "al"})
        )
        if legacy:
            obs["sampling"] = await _error_or(c.call_tool("ask_llm", {}))
            obs["elicit"] = await _error_or(c.call_tool("ask_user", {}))
            obs["roots"] = await _error_or(c.call_tool("roots", {}))
            await c.subscribe_resource("mem://a/info")
            obs["touch"] = await _error_or(c.call_tool("touch", {"uri": "mem://a/info"}))
            await notes.updated.wait()
            obs["chatty"] = await _error_or(c.call_tool("chatty", {}))
            await notes.changed.wait()
            obs["tools_after_change"] = [x["name"] for x in await _all_tools(c)]
            obs["logs"] = sorted(notes.logs, key=repr)
            obs["notifications"] = sorted(notes.notifications)
    return obs


Opener = Callable[[Notes], contextlib.AbstractAsyncContextManager[Client]]


@contextlib.asynccontextmanager
async def direct_stdio(notes: Notes, mode: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=PY, args=[str(KITCHEN), "a"])
    async with Client(params, mode=mode, cache=None, **_callbacks(notes)) as c:  # type: ignore[arg-type]
        yield c


@contextlib.asynccontextmanager
async def direct_http(notes: Notes, mode: str) -> AsyncIterator[Client]:
    async with kitchen_http("a") as url, http_client(url, mode, **_callbacks(notes)) as c:
        yield c


@contextlib.asynccontextmanager
async def via_http_proxy(notes: Notes, mode: str, backend: str) -> AsyncIterator[Client]:
    async with contextlib.AsyncExitStack() as stack:
        if backend == "http":
            env = "a=" + await stack.enter_async_context(kitchen_http("a"))
        else:
            env = f"a={kitchen_cmd('a')}"
        proxy = await stack.enter_async_context(proxy_http(config_with(env)))
        url = proxy.url if mode == "legacy" else f"{proxy.url}?episode=parity-{uuid.uuid4().hex}"
        yield await stack.enter_async_context(http_client(url, mode, **_callbacks(notes)))


@contextlib.asynccontextmanager
async def via_stdio_proxy(notes: Notes, mode: str) -> AsyncIterator[Client]:
    params = stdio_proxy_params([f"a={kitchen_cmd('a')}"])
    async with Client(params, mode=mode, cache=None, **_callbacks(notes)) as c:  # type: ignore[arg-type]
        yield c


async def _compare(direct: Opener, proxied: Opener, *, legacy: bool) -> None:
    notes_d, notes_p = Notes(), Notes()
    async with direct(notes_d) as d:
        expected = await observe(d, notes_d, legacy=legacy)
    async with proxied(notes_p) as p:
        got = await observe(p, notes_p, legacy=legacy)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key
    assert expected["big"] == 3 * 1024 * 1024


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["stdio", "http"])
async def test_http_front_handshake_era_matches_direct(backend: str) -> None:
    await _compare(
        lambda n: direct_stdio(n, "legacy") if backend == "stdio" else direct_http(n, "legacy"),
        lambda n: via_http_proxy(n, "legacy", backend),
        legacy=True,
    )


@pytest.mark.anyio
async def test_http_front_2026_era_with_episode_key_matches_direct() -> None:
    await _compare(lambda n: direct_http(n, MODERN), lambda n: via_http_proxy(n, MODERN, "stdio"), legacy=False)


@pytest.mark.anyio
async def test_stdio_front_handshake_era_matches_direct() -> None:
    await _compare(lambda n: direct_stdio(n, "legacy"), lambda n: via_stdio_proxy(n, "legacy"), legacy=True)


@pytest.mark.anyio
async def test_stdio_front_2026_era_matches_direct() -> None:
    await _compare(lambda n: direct_stdio(n, MODERN), lambda n: via_stdio_proxy(n, MODERN), legacy=False)


@pytest.mark.anyio
async def test_stdio_front_auto_client_gets_a_working_session() -> None:
    notes = Notes()
    with anyio.fail_after(30):
        async with via_stdio_proxy(notes, "auto") as c:
            result = await c.call_tool("echo", {"text": "x"})
            assert result.structured_content == {"text": "x", "backend": "a"}


async def _relays(c: Client) -> list[Any]:
    with anyio.fail_after(60):
        return [await _error_or(c.call_tool(name, {})) for name in ("ask_llm", "ask_user", "roots")]


@pytest.mark.anyio
@pytest.mark.parametrize("front", ["http", "stdio"])
async def test_backend_requests_reach_a_2026_client_as_input_required_round_trips(front: str) -> None:
    """A 2026-07-28 client has no back-channel: sampling, elicitation and roots arrive as round trips
    and give the backend the same answers a handshake-era client gives directly."""
    async with direct_stdio(Notes(), "legacy") as d:
        expected = await _relays(d)
    opener = via_http_proxy(Notes(), MODERN, "stdio") if front == "http" else via_stdio_proxy(Notes(), MODERN)
    async with opener as p:
        assert await _relays(p) == expected
    assert expected[0]["content"][0]["text"] == "sampled: re:hello from a"
