"""Progress while provisioning, and keep-alive progress on silent tool calls, through real MCP clients.

Time is the subject here: a backend that starts slowly (kitchen --start-delay) and a tool that naps, with
short report intervals so the tests stay quick. Nothing asserts a duration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as t
import pytest
from helpers import config_with, http_client, kitchen_cmd, proxy_http

pytestmark = pytest.mark.anyio

SLOW = f"slow={kitchen_cmd('slow')} --start-delay 2"
PROXY_LOGGER = "fleet-mcp-proxy"


@dataclass
class Heard:
    """What reached the client: progress in arrival order, and the proxy's log messages."""

    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    ready_logged: anyio.Event = field(default_factory=anyio.Event)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))

    async def on_log(self, params: t.LoggingMessageNotificationParams) -> None:
        if params.logger == PROXY_LOGGER:
            self.logs.append(str(params.data))
            if "ready after" in str(params.data):
                self.ready_logged.set()

    @property
    def values(self) -> list[float]:
        return [p for p, _, _ in self.progress]

    @property
    def messages(self) -> list[str]:
        return [m or "" for _, _, m in self.progress]


def assert_increasing(values: list[float]) -> None:
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


def assert_provisioning_story(heard: Heard, alias: str) -> None:
    """Progress at once, then periodic reports naming the environment, and a last word when it was ready."""
    assert_increasing(heard.values)
    assert heard.messages[0] == f"provisioning {alias}"
    periodic = [m for m in heard.messages if m.startswith(f"provisioning {alias}, ")]
    assert len(periodic) >= 2, heard.messages
    assert heard.messages[-1].startswith(f"{alias} ready after"), heard.messages
    assert all(total is None for _, total, _ in heard.progress)


def text_of(result: t.CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, t.TextContent)
    return first.text


async def test_tool_call_waiting_for_a_slow_start_hears_progress_and_logs() -> None:
    heard = Heard()
    async with (
        proxy_http(config_with(SLOW, progress_interval=0.4)) as proxy,
        http_client(proxy.url, logging_callback=heard.on_log) as c,
    ):
        with anyio.fail_after(30):
            result = await c.call_tool("echo", {"text": "hi"}, progress_callback=heard.on_progress)
            await heard.ready_logged.wait()
        assert text_of(result) == "hi"
        assert_provisioning_story(heard, "slow")
        periodic_logs = [m for m in heard.logs if m.startswith("provisioning slow, ")]
        assert len(periodic_logs) >= 2 and heard.logs[-1].startswith("slow ready after"), heard.logs

        # Provisioned now: the next call hears nothing from the proxy.
        again = Heard()
        with anyio.fail_after(10):
            await c.call_tool("echo", {"text": "again"}, progress_callback=again.on_progress)
        assert again.progress == []
        assert len(heard.logs) == len(periodic_logs) + 1


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_list_tools_waiting_hears_progress_in_both_eras(mode: str) -> None:
    # Without the catalog cache: a remembered tool list is answered at once, with nothing to wait for.
    heard = Heard()
    async with (
        proxy_http(config_with(SLOW, progress_interval=0.4, catalog_cache=False)) as proxy,
        http_client(proxy.url + "?episode=waiter", mode=mode, log_level="info", logging_callback=heard.on_log) as c,
    ):
        with anyio.fail_after(30):
            listed = await c.session.send_request(
                t.ListToolsRequest(params=t.PaginatedRequestParams()),
                t.ListToolsResult,
                progress_callback=heard.on_progress,
            )
            await heard.ready_logged.wait()
    assert "echo" in {tool.name for tool in listed.tools}
    assert_provisioning_story(heard, "slow")
    assert any(m.startswith("provisioning slow, ") for m in heard.logs), heard.logs


async def test_2026_client_without_log_opt_in_gets_progress_but_no_logs() -> None:
    heard = Heard()
    async with (
        proxy_http(config_with(SLOW, progress_interval=0.4)) as proxy,
        http_client(proxy.url + "?episode=quiet", mode="2026-07-28", logging_callback=heard.on_log) as c,
    ):
        with anyio.fail_after(30):
            await c.call_tool("echo", {"text": "hi"}, progress_callback=heard.on_progress)
    assert_provisioning_story(heard, "slow")
    assert heard.logs == []


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_silent_tool_call_gets_keepalive_progress(mode: str) -> None:
    config = config_with(f"k={kitchen_cmd('k')}", keepalive_interval=0.2)
    async with proxy_http(config) as proxy, http_client(proxy.url + "?episode=nap", mode=mode) as c:
        with anyio.fail_after(30):
            await c.call_tool("echo", {"text": "warm up"})  # provisioned first: only the call's silence counts
            heard = Heard()
            result = await c.call_tool("nap", {"seconds": 1.2}, progress_callback=heard.on_progress)
    assert text_of(result) == "napped 1.2 s"
    assert len(heard.progress) >= 3, heard.progress
    assert_increasing(heard.values)
    assert all(m.startswith("k: nap: still running") for m in heard.messages), heard.messages


async def test_keepalive_beats_fill_silences_without_disturbing_backend_progress() -> None:
    config = config_with(f"k={kitchen_cmd('k')}", keepalive_interval=0.2)
    async with proxy_http(config) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(30):
            await c.call_tool("echo", {"text": "warm up"})
            heard = Heard()
            await c.call_tool("nap", {"seconds": 1.6, "steps": 2}, progress_callback=heard.on_progress)
    assert_increasing(heard.values)
    # The backend's own notifications pass unchanged, values and totals.
    assert [p for p in heard.progress if (p[2] or "").startswith("part")] == [
        (1.0, 2.0, "part 1"),
        (2.0, 2.0, "part 2"),
    ]
    beats = [(i, p) for i, p in enumerate(heard.progress) if "still running" in (p[2] or "")]
    assert len(beats) >= 2, heard.progress
    first_part = heard.messages.index("part 1")
    # Beats before the backend spoke carry no total; beats after it keep the backend's total.
    assert all(p[1] is None for i, p in beats if i < first_part)
    assert all(p[1] == 2.0 for i, p in beats if i > first_part)
    assert any(i > first_part for i, _ in beats), heard.progress


async def test_call_without_progress_token_gets_no_keepalive() -> None:
    """A call that sent no token hears nothing extra: no progress can be addressed to it, and no log."""
    messages: list[Any] = []

    async def on_message(msg: Any) -> None:
        messages.append(msg)

    config = config_with(f"k={kitchen_cmd('k')}", keepalive_interval=0.1)
    async with proxy_http(config) as proxy, http_client(proxy.url, message_handler=on_message) as c:
        with anyio.fail_after(30):
            await c.call_tool("echo", {"text": "warm up"})  # provisioning may log; only the nap is under test
            messages.clear()
            result = await c.call_tool("nap", {"seconds": 0.6})
    assert text_of(result) == "napped 0.6 s"
    assert not [m for m in messages if isinstance(m, t.ProgressNotification | t.LoggingMessageNotification)]
