"""The stdio lane (`serve --stdio` in front of stdio environments): the same answers as the SDK path, and it
really carries the plain calls.

Which path carried a call is read at the backend, never from the proxy: the kitchen writes the request id of every
tool call it runs to `KITCHEN_CALL_IDS`; the lane sends its own string ids (`fmp-s-N`), the SDK client integers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from helpers import KITCHEN, PY, stdio_proxy_params, wait_until
from mcp import Client, MCPError
from mcp.client.stdio import stdio_client

pytestmark = pytest.mark.anyio


def proxy_toml(tmp_path: Path, name: str, *, lane: bool = True, env: str = "", proxy: str = "") -> Path:
    """A proxy config with one stdio kitchen `a` that records its calls (and events) under `tmp_path`."""
    calls, events = tmp_path / f"{name}.calls", tmp_path / f"{name}.events"
    catalog = json.dumps(str(tmp_path / f"{name}.catalog"))
    path = tmp_path / f"{name}.toml"
    path.write_text(
        # Its own catalog cache: a tools/list answered from another test's entry provisions nothing, and the
        # first call (which provisions) would take the SDK path.
        f"[proxy]\nstdio_lane = {str(lane).lower()}\ncatalog_cache_dir = {catalog}\n{proxy}\n"
        f"[env.a]\ncommand = {json.dumps([PY, str(KITCHEN), 'a'])}\n{env}\n"
        f"[env.a.env]\nKITCHEN_CALL_IDS = {json.dumps(str(calls))}\nKITCHEN_EVENTS = {json.dumps(str(events))}\n",
        encoding="utf-8",
    )
    return path


def carried(tmp_path: Path, name: str) -> tuple[int, int]:
    """(lane, SDK path) tool calls the backend ran."""
    path = tmp_path / f"{name}.calls"
    ids = [json.loads(line)[1] for line in path.read_text().splitlines()] if path.exists() else []
    lane = sum(1 for i in ids if isinstance(i, str) and i.startswith("fmp-s-"))
    return lane, sum(1 for i in ids if isinstance(i, int))


def stdio_proxy(config: Path, **kwargs: Any) -> Client:
    params = stdio_proxy_params([], "--config", str(config))
    return Client(stdio_client(params), mode="legacy", cache=None, **kwargs)


async def _sample(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text="hi"), model="m")


async def _elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
    return t.ElicitResult(action="accept", content={"n": "ada"})


async def _transcript(config: Path) -> dict[str, Any]:
    """Every kind of call a plain agent makes, as the client saw it."""
    logs: list[Any] = []

    async def on_log(params: t.LoggingMessageNotificationParams) -> None:
        logs.append((params.level, params.data, params.logger))

    seen: dict[str, Any] = {}
    async with stdio_proxy(
        config, sampling_callback=_sample, elicitation_callback=_elicit, logging_callback=on_log
    ) as c:
        with anyio.fail_after(60):
            await c.list_tools()
            echo = await c.call_tool("echo", {"text": "héllo \u2028 ✓"})
            seen["echo"] = (echo.structured_content, [b.model_dump() for b in echo.content])
            added = await c.call_tool("add", {"a": {"x": 1}, "b": {"x": 2.5}})
            seen["add"] = added.model_dump()
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
            await wait_until(lambda: any(log[2] == "a" for log in logs), 15, "the backend's log message")
            seen["logs"] = [log for log in logs if log[2] != "fleet-mcp-proxy"]  # not the provisioning timings
            with pytest.raises(MCPError) as unknown:
                await c.call_tool("nope", {})
            seen["unknown"] = (unknown.value.code, unknown.value.message)
            errors = await c.read_resource("fleet://episode/current/tool_errors")  # noted from forwarded results
            seen["tool_errors"] = json.loads(errors.contents[0].text)  # type: ignore[union-attr]
    return seen


async def test_the_lane_answers_exactly_as_the_sdk_path_and_carries_the_plain_calls(tmp_path: Path) -> None:
    transcripts = {on: await _transcript(proxy_toml(tmp_path, f"lane-{on}", lane=on)) for on in (True, False)}
    assert transcripts[True] == transcripts[False]
    assert transcripts[True]["big"] == 3 * 1024 * 1024
    assert transcripts[True]["ask_llm"]["text"] == "sampled: hi"
    assert transcripts[True]["count"][1] == [1.0, 2.0, 3.0]
    # Every call but the progress-token one rides the lane; with the lane off, the SDK path carries them all.
    assert carried(tmp_path, "lane-True") == (9, 1)
    assert carried(tmp_path, "lane-False") == (0, 10)


async def test_a_call_cancelled_by_the_client_is_cancelled_at_the_backend(tmp_path: Path) -> None:
    config = proxy_toml(tmp_path, "cancel")
    events = tmp_path / "cancel.events"
    async with stdio_proxy(config) as c:
        with anyio.fail_after(60):
            await c.call_tool("echo", {"text": "provision"})
            with anyio.move_on_after(1):  # the client gives up: the SDK sends notifications/cancelled
                await c.call_tool("block", {})
            await wait_until(lambda: events.exists() and "block cancelled" in events.read_text(), 15, "cancel")
            after = await c.call_tool("echo", {"text": "after"})
    assert after.structured_content == {"text": "after", "backend": "a"}
    assert "block cancelled fmp-s-" in events.read_text()
    assert carried(tmp_path, "cancel") == (2, 1)


async def test_a_hung_call_ends_at_its_timeout_on_the_lane(tmp_path: Path) -> None:
    config = proxy_toml(tmp_path, "timeout", env="call_timeout = 1")
    events = tmp_path / "timeout.events"
    async with stdio_proxy(config) as c:
        with anyio.fail_after(60):
            await c.call_tool("echo", {"text": "provision"})
            result = await c.call_tool("block", {})
            await wait_until(lambda: "block cancelled fmp-s-" in events.read_text(), 15, "the backend sees the cancel")
    assert result.is_error
    assert "'block' did not finish within 1 s" in result.content[0].text  # type: ignore[union-attr]
    assert carried(tmp_path, "timeout") == (1, 1)


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "sdk-path"])
async def test_a_lane_call_holds_its_place_under_max_calls_per_principal(tmp_path: Path, lane: bool) -> None:
    config = proxy_toml(tmp_path, "limit", lane=lane, proxy="max_calls_per_principal = 1")
    events = tmp_path / "limit.events"
    async with stdio_proxy(config) as c, anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            await c.call_tool("echo", {"text": "provision"})
            tg.start_soon(c.call_tool, "block", {})
            await wait_until(lambda: events.exists() and "block started" in events.read_text(), 15, "block runs")
            refused = await c.call_tool("echo", {"text": "second"})
            tg.cancel_scope.cancel()
    assert refused.is_error
    assert "max_calls_per_principal" in refused.content[0].text  # type: ignore[union-attr]
    assert carried(tmp_path, "limit") == ((1, 1) if lane else (0, 2))


async def test_a_step_limited_episode_stays_on_the_sdk_path(tmp_path: Path) -> None:
    config = proxy_toml(tmp_path, "steps", proxy="max_steps = 2")
    async with stdio_proxy(config) as c:
        with anyio.fail_after(60):
            first = await c.call_tool("echo", {"text": "1"})
            second = await c.call_tool("echo", {"text": "2"})
            third = await c.call_tool("echo", {"text": "3"})
    assert not first.is_error and not second.is_error
    assert third.is_error and "max_steps" in third.content[0].text  # type: ignore[union-attr]
    assert carried(tmp_path, "steps") == (0, 2)
