"""Concurrent episodes never see each other's tools, notifications, relayed requests or processes.

Negative checks ride on ordering: each client's standalone notifications arrive in order on one stream, so
once a client has received the notification of its own later action, a leaked one would already be there.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as t
import pytest
from helpers import config_with, http_client, kitchen_cmd, proxy_http
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated, ToolsListChanged

MODERN = "2026-07-28"


@dataclass
class Seen:
    """What one client received from the proxy."""

    name: str
    logs: list[str] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    sampled: list[str] = field(default_factory=list)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def callbacks(self) -> dict[str, Any]:
        async def sampling(ctx: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
            self.sampled.append(getattr(params.messages[0].content, "text", "?"))
            await anyio.lowlevel.checkpoint()  # let the other episode's relay interleave
            content = t.TextContent(type="text", text=self.name)
            return t.CreateMessageResult(role="assistant", content=content, model="m")

        async def log(params: t.LoggingMessageNotificationParams) -> None:
            if params.logger != "fleet-mcp-proxy":  # the proxy's own provisioning reports
                self.logs.append(str(params.data))

        async def message(msg: Any) -> None:
            if isinstance(msg, t.ToolListChangedNotification):
                self.notifications.append("tools/list_changed")
            elif isinstance(msg, t.ResourceUpdatedNotification):
                self.notifications.append(f"resources/updated {msg.params.uri}")
            else:
                return
            self.arrived.set()
            self.arrived = anyio.Event()

        return {"sampling_callback": sampling, "logging_callback": log, "message_handler": message}

    async def wait_for(self, note: str) -> None:
        with anyio.fail_after(15):
            while note not in self.notifications:
                await self.arrived.wait()


def text_of(result: t.CallToolResult) -> str:
    assert not result.is_error, result
    first = result.content[0]
    assert isinstance(first, t.TextContent)
    return first.text


async def tool_names(c: Client) -> set[str]:
    names: set[str] = set()
    cursor = None
    while True:
        page = await c.list_tools(cursor=cursor)
        names |= {tool.name for tool in page.tools}
        if not (cursor := page.next_cursor):
            return names


async def pid_of(c: Client) -> int:
    result = await c.call_tool("pid", {})
    assert result.structured_content is not None
    return int(result.structured_content["pid"])


@contextlib.asynccontextmanager
async def two_episodes(mode: str) -> AsyncIterator[tuple[Client, Seen, Client, Seen]]:
    """One proxy with one backend `a`, and two clients in two episodes (two sessions, or two keys)."""
    async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy:
        one, two = Seen("client-1"), Seen("client-2")
        if mode == "legacy":
            url1 = url2 = proxy.url
        else:
            url1, url2 = (f"{proxy.url}?episode=iso-{uuid.uuid4().hex}" for _ in range(2))
        async with http_client(url1, mode, **one.callbacks()) as c1, http_client(url2, mode, **two.callbacks()) as c2:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:  # both provision at once
                    tg.start_soon(c1.list_tools)
                    tg.start_soon(c2.list_tools)
            assert len(proxy.state.registry.episodes) == 2
            yield c1, one, c2, two


@pytest.mark.anyio
async def test_two_http_sessions_see_only_their_own_tools_notifications_and_processes() -> None:
    async with two_episodes("legacy") as (c1, one, c2, two):
        with anyio.fail_after(60):
            assert await pid_of(c1) != await pid_of(c2)
            await c1.subscribe_resource("mem://a/info")
            await c2.subscribe_resource("mem://a/info")
            await c2.subscribe_resource("mem://shared")

            assert text_of(await c1.call_tool("chatty", {})) == "chatted"
            await one.wait_for("tools/list_changed")
            assert text_of(await c1.call_tool("touch", {"uri": "mem://a/info"})) == "touched"
            await one.wait_for("resources/updated mem://a/info")
            assert "extra_a" in await tool_names(c1)

            # Episode 2 acts after episode 1; by the time its own update arrives, a leak would be there too.
            assert text_of(await c2.call_tool("touch", {"uri": "mem://shared"})) == "touched"
            await two.wait_for("resources/updated mem://shared")
            assert two.notifications == ["resources/updated mem://shared"]
            assert two.logs == []
            assert "extra_a" not in await tool_names(c2)

            assert one.notifications == ["tools/list_changed", "resources/updated mem://a/info"]
            assert one.logs == ["a says hi"]


@pytest.mark.anyio
async def test_sampling_from_a_backend_reaches_only_the_client_of_its_episode() -> None:
    async with two_episodes("legacy") as (c1, one, c2, two):
        results: dict[str, str] = {}

        async def ask(name: str, c: Client) -> None:
            results[name] = text_of(await c.call_tool("ask_llm", {}))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(ask, "client-1", c1)
                    tg.start_soon(ask, "client-2", c2)
        assert results == {"client-1": "sampled: client-1", "client-2": "sampled: client-2"}
        assert one.sampled == two.sampled == ["hello from a"] * 3


@pytest.mark.anyio
async def test_two_2026_episode_keys_see_only_their_own_tools_events_and_processes() -> None:
    async with two_episodes(MODERN) as (c1, _, c2, _):
        with anyio.fail_after(60):
            assert await pid_of(c1) != await pid_of(c2)
            async with (
                c1.listen(tools_list_changed=True, resource_subscriptions=["mem://a/info"]) as sub1,
                c2.listen(tools_list_changed=True, resource_subscriptions=["mem://a/info", "mem://shared"]) as sub2,
            ):
                assert text_of(await c1.call_tool("chatty", {})) == "chatted"
                assert isinstance(await anext(sub1), ToolsListChanged)
                assert "extra_a" in await tool_names(c1)
                assert text_of(await c1.call_tool("touch", {"uri": "mem://a/info"})) == "touched"
                assert await anext(sub1) == ResourceUpdated(uri="mem://a/info")

                # Episode 2 acts after episode 1; its first event must be its own.
                assert text_of(await c2.call_tool("touch", {"uri": "mem://shared"})) == "touched"
                assert await anext(sub2) == ResourceUpdated(uri="mem://shared")
                assert "extra_a" not in await tool_names(c2)
