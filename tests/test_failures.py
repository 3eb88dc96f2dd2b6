"""Failures stay contained: the caller gets a clear result within a deadline, other episodes carry on, the proxy
survives, and no Python exception text reaches the client."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import anyio
import httpx2
import mcp_types as t
import pytest
from helpers import KITCHEN, PY, config_with, http_client, kitchen_cmd, kitchen_http, proxy_http, wait_until
from mcp import Client, MCPError

from fleet_mcp_proxy.config import ProxyConfig, load_config

MODERN = "2026-07-28"
MiB = 1024 * 1024
# What Python exception text looks like: a traceback, a source location, an exception class or group name.
_PYTHON_TEXT = re.compile(r"Traceback|File \"|\b[A-Z]\w*(Error|Exception|Group)\b|<\w[\w.]* object at")


def assert_clean(text: str) -> None:
    assert not _PYTHON_TEXT.search(text), f"Python exception text reached the client: {text!r}"


def error_text(result: t.CallToolResult) -> str:
    assert result.is_error, result
    return " ".join(block.text for block in result.content if isinstance(block, t.TextContent))


def toml_config(tmp_path: Path, **envs: dict[str, object]) -> ProxyConfig:
    """A config file with `[env.NAME]` tables (values written as JSON, which TOML accepts for these types)."""
    lines: list[str] = []
    for name, body in envs.items():
        lines.append(f"[env.{name}]")
        for key, value in body.items():
            if isinstance(value, dict):
                inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inline} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / "proxy.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(path)


async def healthy(url: str) -> None:
    async with httpx2.AsyncClient(timeout=10) as raw:
        response = await raw.get(url.replace("/mcp", "/healthz"))
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def pid_of(c: Client, tool: str = "pid") -> int:
    result = await c.call_tool(tool, {})
    assert not result.is_error, result
    assert result.structured_content is not None
    return int(result.structured_content["pid"])


async def wait_for_event(events: Path, line: str, timeout: float = 15) -> None:
    await wait_until(lambda: events.exists() and line in events.read_text(), timeout, line)


async def error_of(call: Awaitable[t.CallToolResult]) -> str:
    """The text of a tool error, or of a protocol error: the caller must get one or the other."""
    try:
        return error_text(await call)
    except MCPError as exc:
        return exc.message


@contextlib.asynccontextmanager
async def episode(url: str, mode: str = "legacy") -> AsyncIterator[Client]:
    async with http_client(url, mode) as c:
        yield c


# -- environments that never come up ----------------------------------------------------------------------------
async def _start_fails_clearly(
    config: ProxyConfig, alias: str, deadline: float, *, episodes: int = 2, retry: bool = True
) -> list[str]:
    """Episodes ask for tools at once (an MCP error), then (retry) call a tool (an `isError` result):
    every answer names `alias`."""
    messages: list[str] = []
    async with proxy_http(config) as proxy:

        async def list_in_new_episode() -> None:
            async with episode(proxy.url) as c:
                with anyio.fail_after(deadline), pytest.raises(MCPError) as caught:
                    await c.list_tools()
                messages.append(caught.value.message)
                if not retry:
                    return
                with anyio.fail_after(deadline):
                    again = await c.call_tool("echo", {"text": "x"})
                assert again.is_error, "a tool call that cannot provision is a tool error the agent reads"
                messages.append(again.content[0].text)  # type: ignore[union-attr]

        async with anyio.create_task_group() as tg:
            for _ in range(episodes):
                tg.start_soon(list_in_new_episode)
        await healthy(proxy.url)
    assert len(messages) == episodes * (2 if retry else 1)
    for message in messages:
        assert f"'{alias}'" in message, message
    return messages


@pytest.mark.anyio
async def test_a_backend_command_that_does_not_exist_is_an_error_naming_the_environment() -> None:
    await _start_fails_clearly(config_with("ghost=/nonexistent/fleet-backend"), "ghost", deadline=20)


@pytest.mark.anyio
async def test_a_backend_command_that_does_not_exist_reports_no_python_exception_name() -> None:
    for message in await _start_fails_clearly(config_with("ghost=/nonexistent/fleet-backend"), "ghost", deadline=20):
        assert_clean(message)


@pytest.mark.anyio
async def test_a_backend_that_exits_at_once_is_an_error_naming_the_environment() -> None:
    messages = await _start_fails_clearly(config_with(f"quits={PY} -c pass"), "quits", deadline=20)
    for message in messages:
        assert_clean(message)


@pytest.mark.anyio
async def test_a_backend_printing_garbage_fails_at_its_startup_timeout(tmp_path: Path) -> None:
    garbage = [PY, "-c", "print('garbage', flush=True); import time; time.sleep(60)"]
    config = toml_config(tmp_path, bad={"command": garbage, "startup_timeout": 2})
    messages = await _start_fails_clearly(config, "bad", deadline=15, episodes=1, retry=False)
    for message in messages:
        assert_clean(message)


# -- environments that die or hang ------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_backend_crashing_mid_call_is_a_tool_error_and_other_episodes_carry_on() -> None:
    async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy:
        async with episode(proxy.url) as victim, episode(proxy.url) as bystander:
            with anyio.fail_after(30):
                await victim.list_tools()
                other_pid = await pid_of(bystander)
                text = error_text(await victim.call_tool("crash", {}))
            assert "'a'" in text and "unknown" in text, text
            assert_clean(text)

            with anyio.fail_after(15):
                after = await error_of(victim.call_tool("echo", {"text": "still there?"}))
            assert "'a'" in after, after
            assert_clean(after)

            with anyio.fail_after(15):
                assert await pid_of(bystander) == other_pid
                echoed = await bystander.call_tool("echo", {"text": "fine"})
            assert echoed.structured_content == {"text": "fine", "backend": "a"}
        await healthy(proxy.url)


@pytest.mark.anyio
async def test_a_hung_call_ends_at_the_call_timeout_and_the_backend_sees_the_cancel(tmp_path: Path) -> None:
    events = tmp_path / "events"
    config = toml_config(
        tmp_path,
        a={"command": [PY, str(KITCHEN), "a"], "call_timeout": 1, "env": {"KITCHEN_EVENTS": str(events)}},
    )
    async with proxy_http(config) as proxy, episode(proxy.url) as c:
        with anyio.fail_after(15):
            await c.list_tools()
            text = error_text(await c.call_tool("block", {}))
        assert "'block'" in text and "1 s" in text, text
        assert_clean(text)
        await wait_for_event(events, "block cancelled")
        with anyio.fail_after(15):
            assert (await c.call_tool("echo", {"text": "next"})).structured_content == {"text": "next", "backend": "a"}


@pytest.mark.anyio
async def test_an_http_backend_killed_mid_call_is_a_tool_error_and_the_proxy_carries_on(tmp_path: Path) -> None:
    events = tmp_path / "events"
    async with (
        kitchen_http("a", events=events) as backend_url,
        proxy_http(config_with(f"a={backend_url}")) as proxy,
        episode(proxy.url) as c,
    ):
        with anyio.fail_after(30):
            await c.list_tools()
            backend_pid = await pid_of(c)
        outcome: dict[str, str] = {}

        async def call_block() -> None:
            outcome["text"] = await error_of(c.call_tool("block", {}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_block)
            await wait_for_event(events, "block started")
            os.kill(backend_pid, signal.SIGKILL)
            await wait_until(lambda: "text" in outcome, 15, "the blocked call ends")
        assert "'a'" in outcome["text"], outcome
        assert_clean(outcome["text"])

        with anyio.fail_after(15):
            after = await error_of(c.call_tool("echo", {"text": "x"}))
        assert "'a'" in after, after
        assert_clean(after)
        await healthy(proxy.url)


@pytest.mark.anyio
async def test_a_dead_environment_leaves_the_other_environments_of_the_episode_usable() -> None:
    async with kitchen_http("a") as backend_url:
        config = config_with(f"a={backend_url}", f"b={kitchen_cmd('b')}")
        async with proxy_http(config) as proxy, episode(proxy.url) as c:
            with anyio.fail_after(30):
                await c.list_tools()
                os.kill(await pid_of(c, "a__pid"), signal.SIGKILL)
                assert "'a'" in await error_of(c.call_tool("a__echo", {"text": "x"}))
                echoed = await c.call_tool("b__echo", {"text": "b lives"})
            assert echoed.structured_content == {"text": "b lives", "backend": "b"}


# -- protocol-level mistakes ------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_an_unknown_tool_is_a_protocol_error_naming_the_tool() -> None:
    async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy, episode(proxy.url) as c:
        with anyio.fail_after(30):
            await c.list_tools()
            with pytest.raises(MCPError) as caught:
                await c.call_tool("no_such_tool", {})
        assert "no_such_tool" in caught.value.message
        assert_clean(caught.value.message)


@pytest.mark.anyio
async def test_a_keyless_2026_client_is_told_to_pass_an_episode_key() -> None:
    async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy, episode(proxy.url, MODERN) as c:
        with anyio.fail_after(15), pytest.raises(MCPError) as caught:
            await c.list_tools()
        message = caught.value.message
        assert "episode" in message and "Fleet-Episode" in message, message
        assert not proxy.state.registry.episodes, "a keyless request must not open a shared episode"


@pytest.mark.anyio
async def test_a_keyless_auto_client_falls_back_to_the_handshake_and_works() -> None:
    async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy, episode(proxy.url, "auto") as c:
        assert c.protocol_version == "2025-11-25"
        with anyio.fail_after(30):
            result = await c.call_tool("echo", {"text": "auto"})
        assert result.structured_content == {"text": "auto", "backend": "a"}


# -- size and cancellation --------------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["stdio", "http"])
async def test_a_10_mib_result_passes_through_the_http_front(backend: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        target = await stack.enter_async_context(kitchen_http("a")) if backend == "http" else kitchen_cmd("a")
        proxy = await stack.enter_async_context(proxy_http(config_with(f"a={target}")))
        c = await stack.enter_async_context(episode(proxy.url))
        with anyio.fail_after(60):
            await c.list_tools()
            result = await c.call_tool("big", {"size": 10 * MiB})
        assert not result.is_error
        first = result.content[0]
        assert isinstance(first, t.TextContent)
        assert len(first.text) == 10 * MiB


@pytest.mark.anyio
async def test_cancelling_a_call_on_the_client_cancels_it_in_the_backend(tmp_path: Path) -> None:
    events = tmp_path / "events"
    command = f"env KITCHEN_EVENTS={shlex.quote(str(events))} {kitchen_cmd('a')}"
    async with proxy_http(config_with(f"a={command}")) as proxy, episode(proxy.url) as c:
        with anyio.fail_after(30):
            await c.list_tools()
        async with anyio.create_task_group() as tg:

            async def call_block() -> None:
                await c.call_tool("block", {})
                raise AssertionError("block returned instead of being cancelled")

            tg.start_soon(call_block)
            await wait_for_event(events, "block started")
            tg.cancel_scope.cancel()
        await wait_for_event(events, "block cancelled")
        with anyio.fail_after(15):
            echoed = await c.call_tool("echo", {"text": f"after-{uuid.uuid4().hex[:6]}"})
        assert not echoed.is_error
