"""Cancellation through the proxy (reliability.md R12): a 2026-07-28 client that gives up on a call (closing the
POST's stream) cancels it at the backend; a 2025-11-25 connection that drops without `notifications/cancelled`
does not, until the episode ends. Afterwards the proxy's task count is back at its baseline."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from helpers import config_with, http_client, kitchen_cmd, kitchen_http, proxy_http, wait_until

pytestmark = pytest.mark.anyio
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
JSON_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def seen(events: Path, line: str) -> bool:
    return events.exists() and line in events.read_text()


async def tasks_back_to(baseline: int) -> None:
    await wait_until(lambda: len(asyncio.all_tasks()) <= baseline + 5, 15, "the proxy's tasks back to baseline")


@contextlib.asynccontextmanager
async def backend_target(kind: str, events: Path) -> AsyncIterator[str]:
    if kind == "http":
        async with kitchen_http("a", events=events) as url:
            yield url
    else:
        yield f"env KITCHEN_EVENTS={shlex.quote(str(events))} {kitchen_cmd('a')}"


@pytest.mark.parametrize("backend", ["http", "stdio"])
async def test_2026_a_client_that_gives_up_on_a_call_cancels_it_at_the_backend(tmp_path: Path, backend: str) -> None:
    events = tmp_path / "events"
    async with (
        backend_target(backend, events) as target,
        proxy_http(config_with(f"a={target}")) as proxy,
        http_client(f"{proxy.url}?episode=r12-{uuid.uuid4().hex}", MODERN) as c,
    ):
        with anyio.fail_after(30):
            await c.list_tools()  # the episode is up: what follows counts only the call's own tasks
        baseline = len(asyncio.all_tasks())
        async with anyio.create_task_group() as tg:

            async def call_block() -> None:
                await c.call_tool("block", {})
                raise AssertionError("block returned instead of being cancelled")

            tg.start_soon(call_block)
            await wait_until(lambda: seen(events, "block started"), 15, "the backend starts the call")
            tg.cancel_scope.cancel()  # the client gives up: in 2026-07-28 that closes the POST's stream
        with anyio.fail_after(10):
            await wait_until(lambda: seen(events, "block cancelled"), 10, "the backend sees the cancel")
        await tasks_back_to(baseline)
        with anyio.fail_after(15):
            echoed = await c.call_tool("echo", {"text": "after"})
        assert echoed.structured_content == {"text": "after", "backend": "a"}


async def _post(raw: httpx2.AsyncClient, url: str, body: dict[str, Any], session: str | None = None) -> httpx2.Response:
    headers = {**JSON_HEADERS, "mcp-protocol-version": HANDSHAKE}
    if session is not None:
        headers["mcp-session-id"] = session
    return await raw.post(url, json=body, headers=headers)


async def _handshake(raw: httpx2.AsyncClient, url: str) -> str:
    """A 2025-11-25 session opened by hand, so its calls can be dropped without the SDK's cancel notice."""
    params = {"protocolVersion": HANDSHAKE, "capabilities": {}, "clientInfo": {"name": "r12", "version": "1"}}
    init = await _post(raw, url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    assert init.status_code == 200, init.text
    session = init.headers["mcp-session-id"]
    done = await _post(raw, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    assert done.status_code == 202, done.text
    tools = await _post(raw, url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
    assert tools.status_code == 200 and '"block"' in tools.text, tools.text  # provisioned: calls may ride the lane
    return session


@pytest.mark.parametrize("fast_lane", [True, False])
async def test_2025_a_dropped_connection_without_a_cancel_leaves_the_call_running_until_the_episode_ends(
    tmp_path: Path, fast_lane: bool
) -> None:
    events = tmp_path / "events"
    async with (
        kitchen_http("a", events=events) as backend,
        proxy_http(config_with(f"a={backend}", fast_lane=fast_lane)) as proxy,
        httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=None)) as raw,
    ):
        with anyio.fail_after(30):
            session = await _handshake(raw, proxy.url)
        baseline = len(asyncio.all_tasks())
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "block", "arguments": {}}}
        async with anyio.create_task_group() as tg:

            async def call_block() -> None:
                await _post(raw, proxy.url, call, session)
                raise AssertionError("block answered instead of running on")

            tg.start_soon(call_block)
            await wait_until(lambda: seen(events, "block started"), 15, "the backend starts the call")
            tg.cancel_scope.cancel()  # drops the POST's connection; no notifications/cancelled is sent
        # Time is the subject: the call must still be running a while after its connection dropped.
        await anyio.sleep(1.5)
        assert not seen(events, "block cancelled"), "a dropped 2025-11-25 connection is not a cancel"

        # The episode's end (here an explicit DELETE of the session) cancels what it still runs.
        with anyio.fail_after(15):
            ended = await raw.delete(proxy.url, headers={"mcp-session-id": session, "mcp-protocol-version": HANDSHAKE})
        assert ended.status_code == 200, ended.text
        await wait_until(lambda: seen(events, "block cancelled"), 10, "the episode's end cancels the call")
        await wait_until(lambda: not proxy.state.registry.episodes, 15, "the episode ends")
        await tasks_back_to(baseline)
        if fast_lane:
            assert proxy.holder.lane.served == 1, "the call rode the fast lane"
