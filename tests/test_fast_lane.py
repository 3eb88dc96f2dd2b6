"""The tool-call fast lane: the same answers as the SDK path, and it really carries the plain calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from helpers import KITCHEN, PY, config_with, http_client, kitchen_http, proxy_http, wait_until
from mcp import MCPError

from fleet_mcp_proxy.config import load_config

pytestmark = pytest.mark.anyio


async def _sample(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text="hi"), model="m")


async def _elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
    return t.ElicitResult(action="accept", content={"n": "ada"})


async def _session_transcript(url: str) -> dict[str, Any]:
    """Every kind of call a plain agent makes, as the client saw it."""
    logs: list[Any] = []

    async def on_log(params: t.LoggingMessageNotificationParams) -> None:
        logs.append((params.level, params.data, params.logger))

    seen: dict[str, Any] = {}
    client = http_client(url, sampling_callback=_sample, elicitation_callback=_elicit, logging_callback=on_log)
    async with client as c:
        with anyio.fail_after(60):
            await c.list_tools()
            echo = await c.call_tool("echo", {"text": "héllo"})
            seen["echo"] = (echo.structured_content, [b.model_dump() for b in echo.content])
            seen["media"] = [b.model_dump() for b in (await c.call_tool("media", {})).content]
            fail = await c.call_tool("fail", {})
            seen["fail"] = (fail.is_error, fail.content[0].model_dump())
            with pytest.raises(MCPError) as caught:
                await c.call_tool("protocol_error", {})
            seen["protocol_error"] = (caught.value.code, caught.value.message, caught.value.error.data)
            big = await c.call_tool("big", {"size": 3 * 1024 * 1024})
            seen["big"] = len(big.content[0].text)  # type: ignore[union-attr]
            seen["ask_llm"] = (await c.call_tool("ask_llm", {})).content[0].model_dump()
            seen["ask_user"] = (await c.call_tool("ask_user", {})).content[0].model_dump()
            steps: list[float] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                steps.append(value)

            counted = await c.call_tool("count", {"n": 3}, progress_callback=progress)
            seen["count"] = (counted.content[0].model_dump(), steps)
            await c.call_tool("chatty", {})
            await wait_until(lambda: logs, 15, "the backend's log message")
            seen["logs"] = logs
    return seen


async def test_the_lane_answers_exactly_as_the_sdk_path_and_carries_the_plain_calls() -> None:
    async with kitchen_http("a") as backend:
        transcripts: dict[bool, dict[str, Any]] = {}
        served: dict[bool, int] = {}
        for on in (True, False):
            async with proxy_http(config_with(f"a={backend}", fast_lane=on)) as proxy:
                transcripts[on] = await _session_transcript(proxy.url)
                served[on] = proxy.holder.lane.served if proxy.holder.lane is not None else 0
    assert transcripts[True] == transcripts[False]
    assert transcripts[True]["big"] == 3 * 1024 * 1024
    assert transcripts[True]["ask_llm"]["text"] == "sampled: hi"
    assert transcripts[True]["count"][1] == [1.0, 2.0, 3.0]
    # Everything but the progress-token call rides the lane; with the lane off, nothing does.
    assert served[True] >= 8, served
    assert served[False] == 0


async def test_a_call_cancelled_by_the_client_is_cancelled_at_the_backend(tmp_path: Path) -> None:
    events = tmp_path / "events"
    async with (
        kitchen_http("a", events=events) as backend,
        proxy_http(config_with(f"a={backend}")) as proxy,
        http_client(proxy.url) as c,
    ):
        with anyio.fail_after(30):
            await c.list_tools()
            before = proxy.holder.lane.served
            with anyio.move_on_after(1):  # the client gives up: the SDK sends notifications/cancelled
                await c.call_tool("block", {})
            await wait_until(lambda: events.exists() and "block cancelled" in events.read_text(), 15, "cancel")
            assert (await c.call_tool("echo", {"text": "after"})).structured_content == {
                "text": "after",
                "backend": "a",
            }
        assert proxy.holder.lane.served >= before + 2


async def test_a_hung_http_call_ends_at_its_timeout_on_the_lane(tmp_path: Path) -> None:
    events = tmp_path / "events"
    async with kitchen_http("a", events=events) as backend:
        toml = tmp_path / "proxy.toml"
        toml.write_text(f'[env.a]\nurl = "{backend}"\ncall_timeout = 1\n', encoding="utf-8")
        async with proxy_http(load_config(toml)) as proxy, http_client(proxy.url) as c:
            with anyio.fail_after(30):
                await c.list_tools()
                result = await c.call_tool("block", {})
            assert result.is_error
            assert "'block' did not finish within 1 s" in result.content[0].text  # type: ignore[union-attr]
            await wait_until(lambda: "block cancelled" in events.read_text(), 15, "the backend sees the cancel")
            assert proxy.holder.lane.served >= 1


async def test_stdio_backends_stay_on_the_sdk_path() -> None:
    async with proxy_http(config_with(f"a={PY} {KITCHEN} a")) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(30):
            echo = await c.call_tool("echo", {"text": "x"})
        assert echo.structured_content == {"text": "x", "backend": "a"}
        assert proxy.holder.lane.served == 0
