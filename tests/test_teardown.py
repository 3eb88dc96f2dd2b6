"""Every way an episode ends stops the backend processes the proxy spawned for it.

Backend pids come from the kitchen `pid` tool called through the proxy; with two backends (`a`, `b`) the
colliding name is renamed, so the tools are `a__pid` and `b__pid`.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from helpers import (
    PY,
    ROOT,
    child_env,
    config_with,
    http_client,
    kitchen_cmd,
    pid_alive,
    proxy_http,
    stdio_proxy_params,
    stop_process,
    wait_until,
)
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

MODERN = "2026-07-28"
ENVS = (f"a={kitchen_cmd('a')}", f"b={kitchen_cmd('b')}")


async def backend_pids(c: Client) -> list[int]:
    """The pids of both backends of this client's episode (which provisions them)."""
    with anyio.fail_after(30):
        names = {tool.name for tool in (await c.list_tools()).tools}
        assert {"a__pid", "b__pid"} <= names
        pids = []
        for tool in ("a__pid", "b__pid"):
            result = await c.call_tool(tool, {})
            assert not result.is_error, result
            assert result.structured_content is not None
            pids.append(int(result.structured_content["pid"]))
    assert all(pid_alive(pid) for pid in pids)
    return pids


async def all_gone(pids: list[int], timeout: float = 20) -> None:
    await wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout, "backends stopped")


def dropping_client(url: str, mode: str = "legacy") -> Client:
    """A client that goes away without DELETE, as when a connection drops."""
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=None))
    transport = streamable_http_client(url, http_client=http, terminate_on_close=False)
    return Client(transport, mode=mode, cache=None)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_http_session_delete_stops_the_episode_backends() -> None:
    async with proxy_http(config_with(*ENVS)) as proxy:
        async with http_client(proxy.url) as c:  # exits with DELETE (terminate_on_close)
            pids = await backend_pids(c)
            assert len(proxy.state.registry.episodes) == 1
        await all_gone(pids)
        await wait_until(lambda: not proxy.state.registry.episodes, 10, "episode dropped")


@pytest.mark.anyio
async def test_stdio_eof_stops_the_episode_backends() -> None:
    async with Client(stdio_proxy_params(ENVS), mode="legacy", cache=None) as c:  # type: ignore[arg-type]
        pids = await backend_pids(c)
    await all_gone(pids)


@pytest.mark.anyio
async def test_idle_timeout_ends_a_connected_but_silent_legacy_session() -> None:
    async with proxy_http(config_with(*ENVS, idle_timeout=1.0)) as proxy:
        async with http_client(proxy.url) as idle:
            pids = await backend_pids(idle)
            # The client stays connected (its GET stream is open) and sends nothing: time is the subject here.
            await all_gone(pids, timeout=15)
            with anyio.fail_after(15), pytest.raises(MCPError):
                await idle.call_tool("a__pid", {})
            async with http_client(proxy.url) as fresh:
                new_pids = await backend_pids(fresh)
                assert set(new_pids).isdisjoint(pids)
        await all_gone(new_pids)


@contextlib.asynccontextmanager
async def proxy_process(tmp_path: Path, *envs: str) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """`fleet-mcp-proxy serve --port 0` as its own process; yields it and its /mcp URL (read from stderr)."""
    log = tmp_path / "proxy.stderr"
    args = [PY, "-m", "fleet_mcp_proxy", "serve", "--port", "0", "--log-level", "WARNING"]
    for spec in envs:
        args += ["--env", spec]
    with log.open("w") as err:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=ROOT, env=child_env()
        )
    try:
        pattern = re.compile(r"listening on (http://127\.0\.0\.1:\d+/mcp)")
        await wait_until(lambda: pattern.search(log.read_text()) or proc.poll() is not None, 30, "proxy listening")
        match = pattern.search(log.read_text())
        assert match, f"proxy did not start: {log.read_text()}"
        yield proc, match.group(1)
    finally:
        stop_process(proc)


@pytest.mark.anyio
async def test_sigterm_ends_every_open_episode_and_the_proxy_exits(tmp_path: Path) -> None:
    async with proxy_process(tmp_path, *ENVS) as (proc, url), contextlib.AsyncExitStack() as stack:
        pids: list[int] = []
        for _ in range(3):
            client = await stack.enter_async_context(dropping_client(url))
            pids += await backend_pids(client)
        assert len(set(pids)) == 6
        proc.terminate()
        with anyio.fail_after(30):
            code = await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        assert code in (0, -15), (tmp_path / "proxy.stderr").read_text()
        await all_gone(pids)


@pytest.mark.anyio
async def test_delete_with_an_episode_key_ends_a_2026_episode() -> None:
    key = f"teardown-{uuid.uuid4().hex}"
    async with proxy_http(config_with(*ENVS)) as proxy:
        async with http_client(f"{proxy.url}?episode={key}", MODERN) as c:
            pids = await backend_pids(c)
        assert all(pid_alive(pid) for pid in pids), "a 2026-07-28 client has no session to end on exit"
        async with httpx2.AsyncClient(timeout=10) as raw:
            response = await raw.delete(f"{proxy.url}?episode={key}")
        assert response.status_code == 204
        await all_gone(pids)
        # The key now names a fresh episode with fresh backends.
        async with http_client(f"{proxy.url}?episode={key}", MODERN) as c:
            again = await backend_pids(c)
        assert set(again).isdisjoint(pids)


@pytest.mark.anyio
async def test_legacy_client_reconnecting_with_the_same_key_keeps_its_episode() -> None:
    key = f"reconnect-{uuid.uuid4().hex}"
    async with proxy_http(config_with(*ENVS)) as proxy:
        url = f"{proxy.url}?episode={key}"
        async with dropping_client(url) as first:
            pids = await backend_pids(first)
        async with dropping_client(url) as second:
            assert await backend_pids(second) == pids
        (episode,) = proxy.state.registry.episodes.values()
        assert len(episode.session_ids) == 2, "two transport sessions, one episode"


@pytest.mark.anyio
async def test_a_keyed_episode_outlives_a_clean_session_close_until_deleted_by_key() -> None:
    key = f"clean-{uuid.uuid4().hex}"
    async with proxy_http(config_with(*ENVS)) as proxy:
        url = f"{proxy.url}?episode={key}"
        async with http_client(url) as first:  # exits with DELETE of its session
            pids = await backend_pids(first)
        async with http_client(url) as second:
            assert await backend_pids(second) == pids
        async with httpx2.AsyncClient() as raw:
            response = await raw.delete(url)
        assert response.status_code == 204
        await all_gone(pids)


@pytest.mark.anyio
async def test_idle_timeout_does_not_end_an_episode_while_its_first_tools_list_provisions() -> None:
    slow = "a=sh -c " + shlex.quote("sleep 2; exec " + kitchen_cmd("a"))
    async with proxy_http(config_with(slow, idle_timeout=1.0)) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(30):
            tools = await c.list_tools()  # the request is in flight for ~2 s: the episode is not idle
        assert "pid" in {tool.name for tool in tools.tools}
